"""Slicing along one axis: values against numpy, gradients against finite differences,
the adjoint's own kernel, and named errors for bad axes and bounds."""

from __future__ import annotations

import numpy as np
import pytest
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.ops import ALL_OPS, slice_gradient_op, slice_op


@pytest.mark.parametrize("shape, axis, start, stop", [
    ((7,), 0, 2, 5), ((4, 9), 1, 3, 9), ((4, 9), -1, 0, 4), ((5, 3), 0, 1, 4),
    ((2, 3, 12), -1, 4, 8), ((2, 6, 5), 1, 5, 6), ((3, 2, 4, 6), 2, 1, 3),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_slice_matches_numpy(shape, axis, start, stop, dtype):
    x = ad.Variable("x")
    value = np.random.default_rng(0).normal(size=shape).astype(dtype)
    got = ad.Executor([slice_op(x, axis, start, stop)], dtype=dtype).run(
        {x: value}, convert_to_numpy_ret_vals=True)[0]
    index = [slice(None)] * len(shape)
    index[axis] = slice(start, stop)
    np.testing.assert_array_equal(got, value[tuple(index)])


@pytest.mark.parametrize("shape, axis, start, stop", [
    ((4, 9), 1, 3, 9), ((2, 3, 12), -1, 4, 8), ((5, 3), 0, 1, 4), ((3, 2, 4, 6), 2, 1, 3),
])
def test_slice_gradient_kernel_writes_into_zeros(shape, axis, start, stop):
    x, g = ad.Variable("x"), ad.Variable("g")
    node = slice_gradient_op(g, x, axis, start, stop)
    rng = np.random.default_rng(1)
    like = rng.normal(size=shape)
    grad = rng.normal(size=slice_op.reference(slice_op(x, axis, start, stop), like).shape)
    executor = ad.Executor([node], dtype="float64")
    got = executor.run({x: like, g: grad}, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_array_equal(got, slice_gradient_op.reference(node, grad, like))
    assert executor.kernel_calls == 1  # one kernel, no zeros-then-add pile


@pytest.mark.parametrize("build, shapes", [
    (lambda a: slice_op(a, 1, 2, 5) * 2.0, [(3, 6)]),
    (lambda a: slice_op(a, -1, 0, 3) * slice_op(a, -1, 3, 6), [(2, 3, 6)]),
    (lambda a, w: ad.matmul_op(slice_op(a, 0, 1, 3), w), [(4, 5), (5, 2)]),
])
def test_gradients_match_finite_differences(build, shapes):
    check_gradients(build, shapes)


def test_the_adjoint_differentiates_to_a_slice():
    # ``like`` lends its shape only: its gradient is exactly zero.
    check_gradients(lambda like, g: slice_gradient_op(g, like, 1, 1, 3) * 2.0,
                    [(2, 4), (2, 2)], constants=(0,))


def test_whole_axis_is_a_view():
    x = ad.Variable("x")
    executor = ad.Executor([slice_op(x, 1, 0, 4) * 2.0])
    value = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(executor.run({x: value}, convert_to_numpy_ret_vals=True)[0],
                                  2 * value)
    assert executor.kernel_calls == 1  # the multiply only


@pytest.mark.parametrize("axis, start, stop, error, words", [
    (2, 0, 1, ShapeError, "axis 2 is out of range for rank 2"),
    (-3, 0, 1, ShapeError, "axis -3 is out of range"),
    (1, 2, 7, ShapeError, "does not fit axis 1 of size 5"),
])
def test_bad_axis_or_bounds_name_the_node_and_shape(axis, start, stop, error, words):
    x = ad.Variable("tokens")
    with pytest.raises(error) as caught:
        ad.Executor([slice_op(x, axis, start, stop)]).run({x: np.ones((3, 5), np.float32)})
    assert "tokens" in str(caught.value) and "(3, 5)" in str(caught.value)
    assert words in str(caught.value)


@pytest.mark.parametrize("args, error", [
    ((0, 3, 3), ArgumentError), ((0, -1, 2), ArgumentError), ((0, 4, 2), ArgumentError),
    ((0.0, 0, 1), ArgumentTypeError), ((0, True, 2), ArgumentTypeError),
    ((0, 0, "2"), ArgumentTypeError),
])
def test_bad_arguments_are_refused_where_made(args, error):
    with pytest.raises(error, match="Slice\\(x\\)"):
        slice_op(ad.Variable("x"), *args)


def test_slice_is_registered():
    assert slice_op in ALL_OPS and slice_gradient_op in ALL_OPS
    assert ad.slice_op is slice_op
