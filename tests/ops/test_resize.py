"""Resizing (dlsys/ops/resize.py, the resize kernel family): forward and gradients against
PyTorch's F.interpolate (nearest, bilinear with and without align_corners), the kernels
against the numpy reference in the modes PyTorch lacks, the adjoint's own gradient, and
named errors."""

from __future__ import annotations

import numpy as np
import pytest
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ShapeError
from dlsys.ops.resize import resize_gradient_op, resize_op

torch = pytest.importorskip("torch")
F = torch.nn.functional

# name -> (dlsys's resize of x, PyTorch's, the input's shape)
CASES = {
    "nearest_up_2x3": (lambda x: resize_op(x, (6, 12), mode="nearest",
                                           coordinate="asymmetric", nearest="floor"),
                       lambda x: F.interpolate(x, size=(6, 12), mode="nearest"), (1, 2, 3, 4)),
    "nearest_down": (lambda x: resize_op(x, (3, 2), mode="nearest", coordinate="asymmetric",
                                         nearest="floor"),
                     lambda x: F.interpolate(x, size=(3, 2), mode="nearest"), (2, 1, 6, 4)),
    "bilinear_up": (lambda x: resize_op(x, (7, 10), mode="linear"),
                    lambda x: F.interpolate(x, size=(7, 10), mode="bilinear",
                                            align_corners=False), (1, 2, 3, 4)),
    "bilinear_down": (lambda x: resize_op(x, (3, 4), mode="linear"),
                      lambda x: F.interpolate(x, size=(3, 4), mode="bilinear",
                                              align_corners=False), (2, 1, 7, 9)),
    "bilinear_align_corners": (lambda x: resize_op(x, (5, 7), mode="linear",
                                                   coordinate="align_corners"),
                               lambda x: F.interpolate(x, size=(5, 7), mode="bilinear",
                                                       align_corners=True), (1, 2, 3, 4)),
    "bilinear_scale_factor": (lambda x: resize_op(x, (6, 8), (2.0, 2.0), mode="linear"),
                              lambda x: F.interpolate(x, scale_factor=2, mode="bilinear",
                                                      align_corners=False), (1, 1, 3, 4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradients_match_pytorch(case):
    build, reference, shape = CASES[case]
    rng = np.random.default_rng(len(case))
    value = rng.normal(size=shape)
    x = ad.Variable("x")
    out = build(x)
    tensor = torch.tensor(value, requires_grad=True)
    want = reference(tensor)
    upstream = rng.normal(size=tuple(want.shape))
    (want * torch.tensor(upstream)).sum().backward()
    weight = ad.Variable("upstream")
    (grad,) = ad.gradients(out * weight, [x])
    got, got_grad = ad.Executor([out, grad], dtype="float64").run(
        {x: value, weight: upstream}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_grad, tensor.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode, coordinate, nearest, sizes, scales", [
    ("nearest", "half_pixel", "round_prefer_floor", (5, 9), None),
    ("nearest", "asymmetric", "round_prefer_ceil", (8, 8), (2.0, 2.0)),
    ("nearest", "align_corners", "ceil", (3, 5), None),
    ("linear", "pytorch_half_pixel", "round_prefer_floor", (1, 3), None),
    ("linear", "asymmetric", "round_prefer_floor", (2, 6), (0.6, 1.5)),
    ("linear", "half_pixel_symmetric", "round_prefer_floor", (6, 6), (1.7, 1.6)),
])
def test_kernels_match_the_reference(mode, coordinate, nearest, sizes, scales):
    """The forward and adjoint kernels against the numpy reference (ONNX's formulas), in
    float32, for the modes PyTorch does not have."""
    x, g = ad.Variable("x"), ad.Variable("g")
    node = resize_op(x, sizes, scales, mode, coordinate, nearest)
    adjoint = resize_gradient_op(g, x, sizes, scales, mode, coordinate, nearest)
    rng = np.random.default_rng(3)
    value = rng.normal(size=(2, 3, 4)).astype(np.float32)
    grad = rng.normal(size=(2, *sizes)).astype(np.float32)
    got, got_adjoint = ad.Executor([node, adjoint]).run({x: value, g: grad},
                                                         convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got, resize_op.reference(node, value), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_adjoint, resize_gradient_op.reference(adjoint, grad, value),
                               rtol=1e-5, atol=1e-5)


def test_adjoint_differentiates_to_the_resize():
    check_gradients(lambda like, g: resize_gradient_op(g, like, (5, 3), mode="linear") * 2.0,
                    [(1, 2, 3), (1, 5, 3)], constants=(0,))


def test_errors_name_the_op():
    x = ad.Variable("x")
    with pytest.raises(ArgumentError, match="mode must be one of"):
        resize_op(x, (2, 2), mode="cubic")
    with pytest.raises(ArgumentError, match="sizes must be positive ints"):
        resize_op(x, (0, 2))
    with pytest.raises(ArgumentError, match="one per size"):
        resize_op(x, (4, 4), scales=(2.0,))
    with pytest.raises(ShapeError, match="2 resized axes for rank 1"):
        ad.Executor([resize_op(x, (4, 4))]).run({x: np.ones(3, np.float32)})
