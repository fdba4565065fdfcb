"""``passes.batch_split``: a CNN's first large layers computed slice of the batch by slice
give the values of the whole batch, wherever the pass applies and wherever it must not."""

from __future__ import annotations

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys.ops import clip_op, conv2d_op, global_avgpool_op, maxpool2d_op
from dlsys.ops.concat import ConcatOp
from dlsys.ops.placeholder import Parameter
from dlsys.ops.slicing import SliceOp
from dlsys.passes import batch_split


@pytest.fixture(autouse=True)
def _small_thresholds(monkeypatch):
    # Rows of a few KiB count as large, and a slice holds two of them: the split applies
    # to images of 8 x 8 as it does to ImageNet's at batch 32.
    monkeypatch.setenv("DLSYS_TUNE", "0")
    monkeypatch.setattr(batch_split, "SPLIT_ROW_BYTES", 2 * 1024)
    monkeypatch.setattr(batch_split, "SPLIT_SLICE_BYTES", 2 * 16 * 8 * 8 * 4)


def _inverted_residual(rng):
    """x (N, 4, 8, 8) -> conv 3x3 to 8 -> clip -> [1x1 to 16 -> clip -> depthwise 3x3 ->
    clip -> 1x1 to 8] + residual -> max pool -> global average -> (N, 8): an input, the
    output, the parameters, and the residual sum."""
    def param(*shape):
        return Parameter((rng.standard_normal(shape) * 0.3).astype("float32"))

    x = ad.Variable("x")
    stem = clip_op(conv2d_op(x, param(8, 4, 3, 3), padding=1) + param(1, 8, 1, 1), 0.0, 6.0)
    wide = clip_op(conv2d_op(stem, param(16, 8, 1, 1)), 0.0, 6.0)
    deep = clip_op(conv2d_op(wide, param(16, 1, 3, 3), padding=1, groups=16), 0.0, 6.0)
    block = stem + conv2d_op(deep, param(8, 16, 1, 1))
    pooled = global_avgpool_op(maxpool2d_op(block, 2))
    params = [n for n in ad.find_topo_sort([pooled]) if isinstance(n, Parameter)]
    return x, pooled, params, block


def _ops(executor) -> list:
    return [type(step.output.op) for step in executor._prepared.steps]


@pytest.mark.parametrize("batch", [2, 6, 8])
def test_the_split_batch_gives_the_whole_batchs_values(batch):
    rng = np.random.default_rng(0)
    x, out, params, _ = _inverted_residual(rng)
    images = rng.standard_normal((batch, 4, 8, 8)).astype("float32")
    split = ad.Executor([out], constants=params)
    (value,) = split.run({x: images}, convert_to_numpy_ret_vals=True)
    whole = ad.Executor([out])  # no constants: never split
    (expected,) = whole.run({x: images}, convert_to_numpy_ret_vals=True)
    assert SliceOp not in _ops(whole)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    # Two images per slice: a batch of 2 is one slice, left whole.
    assert (_ops(split).count(SliceOp), ConcatOp in _ops(split)) == (
        (batch // 2, True) if batch > 2 else (0, False))
    # Later runs, new images: the same values as the whole batch's.
    images = rng.standard_normal((batch, 4, 8, 8)).astype("float32")
    for _ in range(3):
        (value,) = split.run({x: images}, convert_to_numpy_ret_vals=True)
    (expected,) = whole.run({x: images}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


def test_a_value_asked_for_inside_the_run_is_still_the_whole_batchs():
    rng = np.random.default_rng(1)
    x, out, params, block = _inverted_residual(rng)
    images = rng.standard_normal((8, 4, 8, 8)).astype("float32")
    split = ad.Executor([block, out], constants=params)
    values = split.run({x: images}, convert_to_numpy_ret_vals=True)
    expected = ad.Executor([block, out]).run({x: images}, convert_to_numpy_ret_vals=True)
    assert values[0].shape == (8, 8, 8, 8)
    for got, want in zip(values, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_training_graph_is_never_split():
    # The gradients read every layer's activations over the whole batch: no single value
    # leaves the run, and a graph without constants is not considered at all.
    rng = np.random.default_rng(2)
    x, out, params, _ = _inverted_residual(rng)
    loss = ad.reducesumaxiszero_op(ad.reducesumaxiszero_op(out))
    nodes = [loss, *ad.gradients(loss, params)]
    images = rng.standard_normal((8, 4, 8, 8)).astype("float32")
    executor = ad.Executor(nodes)
    executor.run({x: images})
    assert SliceOp not in _ops(executor)
    frozen = ad.Executor([loss, *ad.gradients(loss, params[:1])], constants=params[1:])
    frozen.run({x: images})
    assert SliceOp not in _ops(frozen)


def test_an_operand_with_rows_of_its_own_stops_the_run():
    # x + y, both fed: y is no constant, so the run cannot read it slice by slice.
    rng = np.random.default_rng(3)
    x, y = ad.Variable("x"), ad.Variable("y")
    w = Parameter((rng.standard_normal((16, 4, 3, 3)) * 0.3).astype("float32"))
    out = conv2d_op(x, w, padding=1) + y
    feeds = {x: rng.standard_normal((8, 4, 8, 8)).astype("float32"),
             y: rng.standard_normal((8, 16, 8, 8)).astype("float32")}
    executor = ad.Executor([global_avgpool_op(out)], constants=[w])
    (value,) = executor.run(feeds, convert_to_numpy_ret_vals=True)
    (expected,) = ad.Executor([global_avgpool_op(out)]).run(feeds,
                                                            convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda x, c: conv2d_op(x, c, padding=1, stride=2),
    lambda x, c: maxpool2d_op(x, 2),
    lambda x, c: clip_op(x, -0.5, 0.5),
    lambda x, c: x * c,
], ids=["conv", "max pool", "clip", "broadcast mul"])
def test_operators_that_split_rows_compute_each_row_alone(make):
    # The trait's promise, checked on the operators' own references: the rows of the
    # whole batch's value are the values of each row alone.
    rng = np.random.default_rng(4)
    x, c = ad.Variable("x"), ad.Variable("c")
    node = make(x, c)
    images = rng.standard_normal((3, 4, 6, 6)).astype("float32")
    other = (rng.standard_normal((5, 4, 3, 3)) if "Conv" in type(node.op).__name__
             else rng.standard_normal((1, 4, 1, 1))).astype("float32")
    assert 0 in node.op.splits_rows
    args = [images if i is x else other for i in node.inputs]
    whole = node.op.reference(node, *args)
    rows = [node.op.reference(node, *[a[r:r + 1] if i is x else a
                                      for i, a in zip(node.inputs, args)]) for r in range(3)]
    np.testing.assert_allclose(whole, np.concatenate(rows), rtol=1e-6, atol=1e-6)
