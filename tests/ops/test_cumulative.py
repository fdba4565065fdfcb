"""The cumulative-sum operator (dlsys/ops/cumulative.py, kernel
dlsys/kernels/reduce/cumulative.py): values against PyTorch's cumsum, gradients against
PyTorch's autograd, for each option and for an axis with lines side by side."""

import numpy as np
import pytest
import torch

import dlsys.autodiff as ad
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.ops.cumulative import cumsum_op


def torch_cumsum(x: torch.Tensor, axis: int, exclusive: bool, reverse: bool) -> torch.Tensor:
    line = x.flip(axis) if reverse else x
    total = line.cumsum(axis)
    if exclusive:
        total = total - line
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
    want = torch_cumsum(tx, axis, exclusive, reverse)
    (want * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_cumsum_refuses_a_bad_axis():
    x = ad.Variable("x")
    with pytest.raises(ArgumentTypeError, match="axis must be an int"):
        cumsum_op(x, 1.5)
    y = cumsum_op(x, 2)
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        ad.Executor([y]).run({x: np.zeros((2, 3), np.float32)})
