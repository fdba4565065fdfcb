"""The reductions beyond sum and mean (norms, extremes, product, log-sum-exp), the index
reductions (arg max and min, hardmax) and local response normalisation: their kernels
against their numpy references, their gradients against finite differences in float64, and
LRN against PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
from graph_gen import numpy_eval
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ShapeError
from dlsys.ops.lrn import lrn_op
from dlsys.ops.reduce_modes import (
    argmax_op,
    argmin_op,
    hardmax_op,
    l1_norm_op,
    l2_norm_op,
    logsumexp_op,
    max_op,
    min_op,
    prod_op,
    sum_square_op,
)

MODES = [l1_norm_op, l2_norm_op, sum_square_op, max_op, min_op, prod_op, logsumexp_op]
# (axes, keepdims): rows of the innermost axis, the innermost kept, everything, one middle.
AXES = [((2,), False), ((0, 1), True), (None, False), ((1,), True)]


def _run(nodes, feeds, dtype="float32"):
    return ad.Executor(nodes, dtype=dtype).run(feeds, convert_to_numpy_ret_vals=True)


def test_reduction_kernels_match_numpy():
    x = ad.Variable("x")
    nodes = [op(x, axes, keepdims) for op in MODES for axes, keepdims in AXES]
    values = np.random.default_rng(0).normal(size=(3, 4, 10)).astype(np.float32)
    for node, got, want in zip(nodes, _run(nodes, {x: values}), numpy_eval(nodes, {x: values})):
        assert got.shape == want.shape, node
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(node))


def test_log_sum_exp_is_stable_and_keeps_minus_infinity():
    x = ad.Variable("x")
    values = np.array([[1000.0, 1000.0], [-np.inf, -np.inf], [-np.inf, 0.0]], np.float32)
    got = _run([logsumexp_op(x, 1)], {x: values})[0]
    np.testing.assert_allclose(got, [1000 + np.log(2), -np.inf, 0.0], rtol=1e-6)


def test_extremes_of_infinite_slices_are_infinite_and_found_first():
    # TVM's max starts from the lowest finite float: a slice of -inf came out -3.4e38, and
    # its arg max -1. numpy (and PyTorch) give -inf, and the first (or last) position.
    x = ad.Variable("x")
    values = np.array([[-np.inf, -np.inf, -np.inf], [np.inf, np.inf, 2.0]], np.float32)
    nodes = [max_op(x, (1,), False), min_op(x, (1,), False), argmax_op(x, 1, False, False),
             argmax_op(x, 1, False, True), argmin_op(x, 1, False, False)]
    got = _run(nodes, {x: values})
    np.testing.assert_array_equal(got[0], [-np.inf, np.inf])
    np.testing.assert_array_equal(got[1], [-np.inf, 2.0])
    np.testing.assert_array_equal(got[2], [0, 0])
    np.testing.assert_array_equal(got[3], [2, 1])
    np.testing.assert_array_equal(got[4], [0, 2])
    values = np.full((2, 3), np.inf, np.float32)
    np.testing.assert_array_equal(_run([min_op(x, (1,), False), argmin_op(x, 1, False, False)],
                                       {x: values})[1], [0, 0])


@pytest.mark.parametrize("op", MODES, ids=lambda op: op.name)
def test_reduction_gradients_match_finite_differences(op):
    check_gradients(lambda x: op(x, (0, 2), False), [(3, 2, 4)])
    check_gradients(lambda x: op(x, (1,), True), [(2, 3, 2)])


def test_l2_gradient_of_a_zero_slice_is_zero():
    x = ad.Variable("x")
    y = l2_norm_op(x, 1)
    grad = ad.gradients(ad.sum_op(y), [x])[0]
    got = _run([grad], {x: np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)})[0]
    np.testing.assert_allclose(got, [[0, 0], [0.6, 0.8]], rtol=1e-6)


@pytest.mark.parametrize("op,reduce", [(max_op, "amax"), (min_op, "amin")])
def test_tied_extremes_share_the_gradient_as_in_pytorch(op, reduce):
    torch = pytest.importorskip("torch")
    values = np.array([[[1, 3, 3], [0, 0, 0]], [[2, 1, 2], [5, 4, 5]]], np.float32)
    weights = np.random.default_rng(5).normal(size=(2, 3)).astype(np.float32)
    x, w = ad.Variable("x"), ad.Variable("w")
    grad = ad.gradients(ad.sum_op(op(x, (1,)) * w), [x])[0]
    got = _run([grad], {x: values, w: weights})[0]
    tensor = torch.tensor(values, requires_grad=True)
    (getattr(tensor, reduce)(1) * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-6)


def test_arg_extremes_and_hardmax_match_numpy():
    x = ad.Variable("x")
    rng = np.random.default_rng(1)
    values = rng.integers(0, 3, size=(4, 5, 3)).astype(np.float32)  # many ties
    nodes = [op(x, axis, keepdims, last) for op in (argmax_op, argmin_op)
             for axis, keepdims, last in ((1, True, False), (-1, False, True), (0, False, False))]
    nodes += [hardmax_op(x, 1), hardmax_op(x, -1)]
    for node, got, want in zip(nodes, _run(nodes, {x: values}), numpy_eval(nodes, {x: values})):
        assert got.shape == want.shape, node
        np.testing.assert_array_equal(got, want, err_msg=str(node))
    vector = ad.Variable("v")
    got = _run([argmax_op(vector, 0, keepdims=False)], {vector: np.array([1, 5, 5, 2],
                                                                          np.float32)})[0]
    assert got.shape == (1,) and got[0] == 1


def test_index_reductions_pass_no_gradient():
    x = ad.Variable("x")
    loss = ad.sum_op(argmax_op(x, 1) + hardmax_op(x, 1) + x * 2.0)
    grad = ad.gradients(loss, [x])[0]
    got = _run([grad], {x: np.random.default_rng(2).normal(size=(2, 3)).astype(np.float32)})
    np.testing.assert_array_equal(got[0], np.full((2, 3), 2.0, np.float32))


def test_axis_out_of_range_is_a_shape_error():
    x = ad.Variable("x")
    with pytest.raises(ShapeError, match="axis 3 is out of range"):
        _run([argmax_op(x, 3)], {x: np.zeros((2, 3), np.float32)})


@pytest.mark.parametrize("size", [3, 4])
def test_lrn_gradient_matches_finite_differences(size):
    check_gradients(lambda x: lrn_op(x, size, 0.3, 0.75, 2.0), [(2, 6, 2, 2)])


def test_lrn_matches_pytorch_and_its_reference():
    torch = pytest.importorskip("torch")
    x = ad.Variable("x")
    values = np.random.default_rng(3).normal(size=(2, 7, 3, 3)).astype(np.float32) * 3
    odd, even = lrn_op(x, 5, 1e-2, 0.75, 1.0), lrn_op(x, 4, 1e-1, 0.5, 2.0)
    got_odd, got_even = _run([odd, even], {x: values})
    # PyTorch's window matches ONNX's for odd sizes (for even ones it reaches further back).
    tensor = torch.tensor(values, requires_grad=True)
    expected = torch.nn.functional.local_response_norm(tensor, 5, 1e-2, 0.75, 1.0)
    np.testing.assert_allclose(got_odd, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_even, numpy_eval([even], {x: values})[0], rtol=1e-5,
                               atol=1e-6)
    weights = np.random.default_rng(4).normal(size=values.shape).astype(np.float32)
    (expected * torch.tensor(weights)).sum().backward()
    w = ad.Variable("w")
    grad = ad.gradients(ad.sum_op(odd * w), [x])[0]
    np.testing.assert_allclose(_run([grad], {x: values, w: weights})[0],
                               tensor.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_lrn_refuses_a_bias_that_is_not_positive():
    with pytest.raises(ArgumentError, match="bias must be positive"):
        lrn_op(ad.Variable("x"), 3, bias=0.0)
    v = ad.Variable("v")
    with pytest.raises(ShapeError, match=r"\(N, C, ...\)"):
        _run([lrn_op(v, 3)], {v: np.zeros(3, np.float32)})
