"""The cumulative-sum and -product operators (dlsys/ops/cumulative.py, kernels
dlsys/kernels/reduce/cumulative.py): values against PyTorch's cumsum and cumprod, gradients
against PyTorch's autograd, for each option, for an axis with lines side by side and for a
product through zeros."""

import numpy as np
import pytest
import torch

import dlsys.autodiff as ad
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.ops.cumulative import cumprod_op, cumsum_op


def torch_cumulative(x: torch.Tensor, axis: int, exclusive: bool, reverse: bool,
                     product: bool = False) -> torch.Tensor:
    line = x.flip(axis) if reverse else x
    if exclusive:  # shifted by one step, the first step the operation's identity
        first = torch.ones_like if product else torch.zeros_like
        line = torch.cat([first(line.narrow(axis, 0, 1)),
                          line.narrow(axis, 0, line.shape[axis] - 1)], axis)
    total = line.cumprod(axis) if product else line.cumsum(axis)
    return total.flip(axis) if reverse else total


@pytest.mark.parametrize("shape,axis,exclusive,reverse", [
    ((6,), 0, False, False),
    ((3, 5, 8), 1, True, False),  # vector lines side by side
    ((4, 3), -1, False, True),
    ((2, 7, 3), 1, True, True),
])
def test_cumsum_and_its_gradient_match_pytorch(shape, axis, exclusive, reverse):
    x, upstream = ad.Variable("x"), ad.Variable("g")
    y = cumsum_op(x, axis, exclusive, reverse)
    (grad,) = ad.gradients(ad.sum_op(y * upstream), [x])
    rng = np.random.default_rng(0)
    values, g = rng.standard_normal(shape), rng.standard_normal(shape)
    got, got_grad = ad.Executor([y, grad], dtype="float64").run(
        {x: values, upstream: g}, convert_to_numpy_ret_vals=True)
    tx = torch.tensor(values, requires_grad=True)
    want = torch_cumulative(tx, axis, exclusive, reverse)
    (want * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,axis,exclusive,reverse", [
    ((7,), 0, False, False),
    ((3, 5, 4), 1, True, False),
    ((2, 6), -1, False, True),
    ((2, 5, 3), 1, True, True),
])
def test_cumprod_and_its_gradient_through_zeros_match_pytorch(shape, axis, exclusive, reverse):
    x, upstream = ad.Variable("x"), ad.Variable("g")
    y = cumprod_op(x, axis, exclusive, reverse)
    (grad,) = ad.gradients(ad.sum_op(y * upstream), [x])
    rng = np.random.default_rng(2)
    values, g = rng.uniform(0.5, 1.5, shape), rng.standard_normal(shape)
    values.reshape(-1)[[1, len(values.reshape(-1)) // 2]] = 0.0  # the gradient divides by no x
    got, got_grad = ad.Executor([y, grad], dtype="float64").run(
        {x: values, upstream: g}, convert_to_numpy_ret_vals=True)
    tx = torch.tensor(values, requires_grad=True)
    want = torch_cumulative(tx, axis, exclusive, reverse, product=True)
    (want * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_cumsum_refuses_a_bad_axis():
    x = ad.Variable("x")
    with pytest.raises(ArgumentTypeError, match="axis must be an int"):
        cumsum_op(x, 1.5)
    y = cumsum_op(x, 2)
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        ad.Executor([y]).run({x: np.zeros((2, 3), np.float32)})
