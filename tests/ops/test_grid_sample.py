"""Grid sampling (dlsys/ops/grid_sample.py, kernels dlsys/kernels/resize/grid_sample.py):
values against ONNX's reference GridSample for every mode and padding, gradients against
PyTorch's F.grid_sample (image and grid), and the refusals."""

import numpy as np
import pytest
import torch

import dlsys.autodiff as ad
from dlsys.errors import ArgumentError, ShapeError
from dlsys.ops.grid_sample import grid_sample_op

onnx_reference = pytest.importorskip("onnx.reference.ops.op_grid_sample")


def reference(x, grid, mode, padding, align):
    sampler = onnx_reference.GridSample.__new__(onnx_reference.GridSample)
    sampler.mode, sampler.padding_mode, sampler.align_corners = mode, padding, int(align)
    return sampler._run(x, grid, mode=mode, padding_mode=padding, align_corners=int(align))[0]


def data(x_shape, grid_shape, seed=0):
    rng = np.random.default_rng(seed)
    # Grid points past [-1, 1] reach the padding.
    return rng.standard_normal(x_shape), rng.uniform(-1.4, 1.4, grid_shape)


CASES = [
    ("linear", "zeros", False, (2, 3, 4, 5), (2, 3, 2, 2)),
    ("linear", "border", True, (1, 2, 4, 3), (1, 2, 3, 2)),
    ("linear", "reflection", False, (1, 2, 4, 5), (1, 3, 3, 2)),
    ("nearest", "reflection", True, (1, 2, 3, 4), (1, 2, 2, 2)),
    ("cubic", "zeros", False, (1, 2, 5, 4), (1, 3, 2, 2)),
    ("linear", "zeros", True, (1, 2, 3, 2, 4), (1, 2, 2, 1, 3)),  # volumetric
]


@pytest.mark.parametrize("mode,padding,align,x_shape,grid_shape", CASES)
def test_grid_sample_and_its_gradients(mode, padding, align, x_shape, grid_shape):
    x_value, grid_value = data(x_shape, grid_shape)
    x, grid, upstream = ad.Variable("x"), ad.Variable("grid"), ad.Variable("g")
    y = grid_sample_op(x, grid, mode, padding, align)
    grads = ad.gradients(ad.sum_op(y * upstream), [x, grid])
    g = np.random.default_rng(1).standard_normal((*x_shape[:2], *grid_shape[1:-1]))
    got, dx, dgrid = ad.Executor([y, *grads], dtype="float64").run(
        {x: x_value, grid: grid_value, upstream: g}, convert_to_numpy_ret_vals=True)
    # (The reference computes the coordinates in float32.)
    np.testing.assert_allclose(got, reference(x_value, grid_value, mode, padding, align),
                               rtol=1e-5, atol=1e-6)
    tx = torch.tensor(x_value, requires_grad=True)
    tgrid = torch.tensor(grid_value, requires_grad=True)
    torch_mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    out = torch.nn.functional.grid_sample(tx, tgrid, torch_mode, padding, align)
    (out * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dgrid, tgrid.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_cubic_border_gradients_match_finite_differences():
    """ONNX's cubic border clamps an outside coordinate before its taps (PyTorch's clamps
    only the taps), so this case is checked against differences of the forward itself."""
    x_shape, grid_shape = (1, 1, 4, 4), (1, 2, 2, 2)
    x_value, grid_value = data(x_shape, grid_shape, 3)
    x, grid, upstream = ad.Variable("x"), ad.Variable("grid"), ad.Variable("g")
    y = grid_sample_op(x, grid, "cubic", "border", True)
    loss = ad.sum_op(y * upstream)
    g = np.random.default_rng(1).standard_normal((1, 1, 2, 2))
    executor = ad.Executor([loss, *ad.gradients(loss, [x, grid])], dtype="float64")

    def run(xv, gv):
        return executor.run({x: xv, grid: gv, upstream: g}, convert_to_numpy_ret_vals=True)

    _, dx, dgrid = run(x_value, grid_value)
    step = 1e-6
    for array, grad in ((x_value, dx), (grid_value, dgrid)):
        for flat in range(0, array.size, 3):
            bumped = [array.copy(), array.copy()]
            bumped[0].flat[flat] += step
            bumped[1].flat[flat] -= step
            values = [run(*((b, grid_value) if array is x_value else (x_value, b)))[0]
                      for b in bumped]
            numeric = (values[0] - values[1]).item() / (2 * step)
            np.testing.assert_allclose(grad.flat[flat], numeric, rtol=1e-5, atol=1e-7)


def test_grid_sample_refusals():
    x, grid = ad.Variable("x"), ad.Variable("grid")
    with pytest.raises(ArgumentError, match="mode must be one of"):
        grid_sample_op(x, grid, "area")
    y = grid_sample_op(x, grid, "cubic")
    with pytest.raises(ShapeError, match="cubic sampling takes 2-d images"):
        ad.Executor([y]).run({x: np.zeros((1, 1, 2, 2, 2), np.float32),
                              grid: np.zeros((1, 1, 1, 1, 3), np.float32)})
