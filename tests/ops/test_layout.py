"""The Transpose operator (dlsys/ops/layout.py): its kernel against numpy, its gradient
against central finite differences in float64, its view when only size-1 axes move, and
bad permutations. It needs no onnx: the importer is its first user."""

from __future__ import annotations

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.ops.layout import transpose_op

CASES = [((2, 3), None), ((2, 3, 4), (0, 2, 1)), ((2, 3, 4, 5), (0, 2, 3, 1)),
         ((2, 3, 4, 5), (3, 1, 0, 2)), ((3, 1, 4), (1, 0, 2)), ((5,), (0,)),
         # attention's heads split off and back: (B, T, H, D) <-> (B, H, T, D)
         ((2, 3, 2, 4), (0, 2, 1, 3)), ((2, 3, 4), (0, -1, -2)), ((2, 3, 1, 2, 3), None),
         ((2, 1, 3, 1, 2, 3), (5, 3, 1, 0, 4, 2))]


@pytest.mark.parametrize("shape,perm", CASES)
def test_transpose_matches_numpy(shape, perm):
    x = ad.Variable("x")
    value = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    node = transpose_op(x, perm)
    out = ad.Executor([node]).run({x: value}, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_array_equal(out, np.transpose(value, perm))
    np.testing.assert_array_equal(out, node.op.reference(node, value))


@pytest.mark.parametrize("shape,perm", CASES)
def test_transpose_gradient_matches_finite_differences(shape, perm):
    rng = np.random.default_rng(1)
    x, weight = ad.Variable("x"), ad.Variable("R")
    value = rng.normal(size=shape)
    upstream = rng.normal(size=np.transpose(value, perm).shape)
    loss = ad.sum_op(transpose_op(x, perm) * weight)
    grad = ad.gradients(loss, [x])[0]
    analytic = ad.Executor([grad], dtype="float64").run({x: value, weight: upstream},
                                                         convert_to_numpy_ret_vals=True)[0]
    forward = ad.Executor([loss], dtype="float64")
    numeric = np.zeros_like(value)
    eps = 1e-6
    for index in np.ndindex(*shape):
        for sign in (1, -1):
            shifted = value.copy()
            shifted[index] += sign * eps
            numeric[index] += sign * forward.run({x: shifted, weight: upstream},
                                                 convert_to_numpy_ret_vals=True)[0][0]
    np.testing.assert_allclose(analytic, numeric / (2 * eps), rtol=1e-6, atol=1e-7)


def test_moving_only_size_one_axes_is_a_view():
    x = ad.Variable("x")
    ex = ad.Executor([transpose_op(x, (1, 0, 2)) * 2.0])
    value = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
    np.testing.assert_array_equal(ex.run({x: value}, convert_to_numpy_ret_vals=True)[0],
                                  2 * value.transpose(1, 0, 2))
    assert ex.kernel_calls == 1  # the multiply; the transpose ran no kernel


def test_bad_permutations_are_named():
    x = ad.Variable("x")
    with pytest.raises(ArgumentTypeError, match="Transpose"):
        transpose_op(x, "01")
    with pytest.raises(ArgumentError, match="more than once"):
        transpose_op(x, (0, 0))
    node = transpose_op(x, (0, 2))
    with pytest.raises(ShapeError, match=r"Transpose\(x, \(0, 2\)\).*not a permutation"):
        ad.Executor([node]).run({x: np.zeros((2, 3), np.float32)})
    # -1 names the last axis, here axis 1 a second time
    node = transpose_op(x, (1, -1))
    with pytest.raises(ShapeError, match=r"Transpose\(x, \(1, -1\)\).*not a permutation"):
        ad.Executor([node]).run({x: np.zeros((2, 3), np.float32)})
