"""Reshape specs with 0 (keep the input's size on that axis, ONNX's convention): sizes
known only at the feed survive a reshape, as (B, T, E) -> (B, T, H, D)."""

from __future__ import annotations

import numpy as np
import pytest
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ShapeError
from dlsys.ops.layout import transpose_op
from dlsys.ops.reshape import reshape_op, resolve_shape


@pytest.mark.parametrize("shape, spec, want", [
    ((2, 3, 8), (0, 0, 4, 2), (2, 3, 4, 2)),
    ((2, 3, 8), (0, 0, 2, -1), (2, 3, 2, 4)),
    ((2, 3, 4, 2), (0, 0, -1), (2, 3, 8)),
    ((5, 6), (0, 6), (5, 6)),
    ((5, 6), (0, 2, 3), (5, 2, 3)),
    ((5, 6), (-1, 0), (5, 6)),
])
def test_zero_keeps_the_input_size(shape, spec, want):
    assert resolve_shape(shape, spec) == want
    x = ad.Variable("x")
    value = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    executor = ad.Executor([reshape_op(x, spec) * 2.0])
    got = executor.run({x: value}, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_array_equal(got, 2 * value.reshape(want))
    assert executor.kernel_calls == 1  # the multiply: the reshape is a view


def test_one_graph_serves_every_batch_and_length():
    x = ad.Variable("x")
    heads = transpose_op(reshape_op(x, (0, 0, 2, 3)), (0, 2, 1, 3))
    executor = ad.Executor([heads])
    for shape in [(2, 5, 6), (3, 1, 6), (1, 4, 6)]:
        value = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
        got = executor.run({x: value}, convert_to_numpy_ret_vals=True)[0]
        np.testing.assert_array_equal(got, value.reshape(*shape[:2], 2, 3).transpose(0, 2, 1, 3))


@pytest.mark.parametrize("build, shapes", [
    (lambda a: reshape_op(a, (0, 0, 2, 2)) * 2.0, [(2, 3, 4)]),
    (lambda a: reshape_op(transpose_op(reshape_op(a, (0, 0, 2, -1)), (0, 2, 1, 3)),
                          (0, 0, -1)), [(2, 3, 4)]),
])
def test_gradients_match_finite_differences(build, shapes):
    check_gradients(build, shapes)


@pytest.mark.parametrize("shape, spec, words", [
    ((2, 6), (0, 0, 3), "36 elements"),
    ((2, 6), (0, 5), "12 elements"),
    ((2, 6), (0, 0, 0), "has 2 axes"),
])
def test_bad_zeros_name_the_node(shape, spec, words):
    x = ad.Variable("images")
    with pytest.raises(ShapeError) as caught:
        ad.Executor([reshape_op(x, spec)]).run({x: np.ones(shape, np.float32)})
    assert "images" in str(caught.value) and words in str(caught.value)


def test_negative_sizes_other_than_minus_one_are_refused():
    with pytest.raises(ShapeError, match="zeros"):
        reshape_op(ad.Variable("x"), (0, -2))
