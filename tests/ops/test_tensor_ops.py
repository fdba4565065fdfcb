"""The tensor operators ONNX's shape ops import to (concat, take, pad, tile, expand, trilu,
a slice with a step): each kernel against numpy, each gradient against finite differences
in float64, and named errors for shapes that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ShapeError
from dlsys.ops import (
    ALL_OPS,
    as_float_op,
    concat_op,
    expand_to_op,
    pad_gradient_op,
    pad_op,
    slice_op,
    take_gradient_op,
    take_op,
    tile_op,
    trilu_op,
)
from dlsys.ops.take import index_runs


def run(node, inputs, values, dtype="float32"):
    feeds = dict(zip(inputs, values))
    return ad.Executor([node], dtype=dtype).run(feeds, convert_to_numpy_ret_vals=True)[0]


def normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# (build from input nodes, input shapes, numpy of the input arrays)
FORWARD = {
    "concat_3_inputs_axis_1": (lambda a, b, c: concat_op([a, b, c], 1),
                               [(2, 1, 3), (2, 4, 3), (2, 2, 3)],
                               lambda a, b, c: np.concatenate([a, b, c], 1)),
    "concat_last_axis": (lambda a, b: concat_op([a, b], -1), [(3, 2), (3, 5)],
                         lambda a, b: np.concatenate([a, b], -1)),
    "slice_step": (lambda a: slice_op(a, 1, 1, 8, 3), [(2, 9)], lambda a: a[:, 1:8:3]),
    "slice_reversed": (lambda a: slice_op(a, 0, 4, -1, -1), [(5, 3)], lambda a: a[::-1]),
    "slice_backward_step": (lambda a: slice_op(a, -1, 6, 1, -2), [(2, 7)],
                            lambda a: a[:, 6:1:-2]),
    "take_scattered": (lambda a: take_op(a, [2, 0, -1, 2, 3, 4], 1), [(2, 5, 3)],
                       lambda a: a[:, [2, 0, 4, 2, 3, 4]]),
    "take_one": (lambda a: take_op(a, [1], 0), [(3, 4)], lambda a: a[1:2]),
    "pad_constant": (lambda a: pad_op(a, [(0, 0), (1, 2), (2, 0)], "constant", 1.5),
                     [(2, 3, 4)],
                     lambda a: np.pad(a, [(0, 0), (1, 2), (2, 0)], constant_values=1.5)),
    "pad_edge": (lambda a: pad_op(a, [(2, 1), (0, 3)], "edge"), [(3, 4)],
                 lambda a: np.pad(a, [(2, 1), (0, 3)], mode="edge")),
    "pad_reflect": (lambda a: pad_op(a, [(1, 2), (3, 1)], "reflect"), [(3, 4)],
                    lambda a: np.pad(a, [(1, 2), (3, 1)], mode="reflect")),
    "tile": (lambda a: tile_op(a, [2, 1, 3]), [(2, 3, 2)], lambda a: np.tile(a, [2, 1, 3])),
    "expand_both_ways": (lambda a: expand_to_op(a, [2, 1, 4]), [(3, 1)],
                         lambda a: np.broadcast_to(a, (2, 3, 4))),
    "triu": (lambda a: trilu_op(a, True, 1), [(2, 3, 4)], lambda a: np.triu(a, 1)),
    "tril": (lambda a: trilu_op(a, False, -1), [(4, 3)], lambda a: np.tril(a, -1)),
}


@pytest.mark.parametrize("case", FORWARD)
def test_kernel_matches_numpy(case):
    build, shapes, expected = FORWARD[case]
    inputs = [ad.Variable(f"x{i}") for i in range(len(shapes))]
    values = [normal(s, i) for i, s in enumerate(shapes)]
    node = build(*inputs)
    got = run(node, inputs, values)
    np.testing.assert_array_equal(got, expected(*values))
    np.testing.assert_array_equal(got, node.op.reference(node, *values))


GRADIENTS = {
    "concat": (lambda a, b: concat_op([a, b, a], 1), [(2, 3), (2, 2)]),
    "slice_step": (lambda a: slice_op(a, 1, 5, 0, -2), [(2, 6)]),
    "take_repeated": (lambda a: take_op(a, [1, 1, 3, 2, 1, 0], 0), [(4, 2)]),
    "pad_constant": (lambda a: pad_op(a, [(1, 0), (2, 1)], "constant", 3.0), [(2, 3)]),
    "pad_edge": (lambda a: pad_op(a, [(2, 1), (1, 3)], "edge"), [(3, 2)]),
    "pad_reflect": (lambda a: pad_op(a, [(0, 2), (2, 1)], "reflect"), [(3, 4)]),
    "tile": (lambda a: tile_op(a, [2, 3]), [(2, 2)]),
    "expand": (lambda a: expand_to_op(a, [3, 1, 2]), [(2, 1)]),
    "trilu": (lambda a: trilu_op(a, True, 0), [(3, 3)]),
}


@pytest.mark.parametrize("case", GRADIENTS)
def test_gradient_matches_finite_differences(case):
    build, shapes = GRADIENTS[case]
    check_gradients(build, shapes)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_adjoint_kernel_matches_its_reference(mode):
    pads = [(2, 1), (1, 2)]
    g, like = ad.Variable("g"), ad.Variable("like")
    node = pad_gradient_op(g, like, pads, mode)
    like_value, grad = normal((3, 3), 1).astype(np.float64), normal((6, 6), 2).astype(np.float64)
    got = run(node, [g, like], [grad, like_value], "float64")
    np.testing.assert_allclose(got, node.op.reference(node, grad, like_value), rtol=1e-12)


def test_take_adjoint_adds_repeated_indices():
    g, like = ad.Variable("g"), ad.Variable("like")
    node = take_gradient_op(g, like, [3, 0, 3, 3], 1)
    grad = normal((2, 4), 3)
    got = run(node, [g, like], [grad, np.zeros((2, 5), np.float32)])
    np.testing.assert_allclose(got[:, 3], grad[:, [0, 2, 3]].sum(1), rtol=1e-6)
    np.testing.assert_array_equal(got[:, [1, 2, 4]], 0)


@pytest.mark.parametrize("value", [np.array([[3, -2], [0, 7]], np.int64),
                                   np.array([5, 1 << 20], np.int32),
                                   np.array([1.5, -2.25], np.float32)])
def test_as_float_reads_integers_fed_in_their_type(value):
    x = ad.Variable("mask")
    got = run(as_float_op(x) * 2.0, [x], [value])
    np.testing.assert_array_equal(got, value.astype(np.float32) * 2)


def test_as_float_passes_a_float_gradient_through():
    check_gradients(lambda a: as_float_op(a) * a, [(2, 3)])


def test_index_runs_cover_ranges_reversals_and_repeats():
    assert index_runs((0, 1, 2, 3)) == ((0, 0, 1, 4),)
    assert index_runs((4, 3, 2)) == ((0, 4, -1, 3),)
    assert index_runs((1, 1, 5, 7)) == ((0, 1, 1, 1), (1, 1, 4, 2), (3, 7, 1, 1))


@pytest.mark.parametrize("build, shapes, words", [
    (lambda a, b: concat_op([a, b], 0), [(2, 3), (2, 4)], "agree on every axis but 0"),
    (lambda a: take_op(a, [0, 5], 1), [(2, 5)], "index 5 is out of range for axis 1"),
    (lambda a: pad_op(a, [(3, 0)], "reflect"), [(3,)], "must be below its size 3"),
    (lambda a: tile_op(a, [2]), [(2, 3)], "1 repeat counts for rank 2"),
    (lambda a: expand_to_op(a, [4]), [(3,)], "cannot broadcast"),
])
def test_shapes_that_do_not_fit_name_the_node(build, shapes, words):
    inputs = [ad.Variable(f"v{i}") for i in range(len(shapes))]
    with pytest.raises(ShapeError, match=words) as caught:
        run(build(*inputs), inputs, [np.ones(s, np.float32) for s in shapes])
    assert "v0" in str(caught.value)


def test_bad_arguments_are_refused_where_made():
    x = ad.Variable("x")
    with pytest.raises(ArgumentError, match="mode"):
        pad_op(x, [(1, 1)], "wrap")
    with pytest.raises(ArgumentError, match="must not be negative"):
        pad_op(x, [(-1, 1)])
    with pytest.raises(ArgumentError, match="step must not be 0"):
        slice_op(x, 0, 0, 2, 0)
    with pytest.raises(ArgumentError, match="non-empty list"):
        concat_op([], 0)


def test_registered():
    assert {concat_op, take_op, pad_op, tile_op, expand_to_op, trilu_op,
            as_float_op} <= set(ALL_OPS)
