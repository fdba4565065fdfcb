"""Max pooling whose windows overlap (ResNet's and ShuffleNet's 3x3 stride-2 stem pool)
after a ReLU: its gradient fuses the ReLU's mask into the pool's adjoint, and must match
PyTorch's, the same on every run."""

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys.ops.pool import maxpool2d_op

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (3, 1, 1), (2, 2, 1),
                                                    (3, 2, 0), (5, 3, 2)])
def test_relu_then_overlapping_max_pool_gradient_matches_pytorch(kernel, stride, padding):
    rng = np.random.default_rng(kernel * 10 + stride)
    images = rng.normal(size=(2, 4, 16, 16)).astype(np.float32)
    x, weight = ad.Variable("x"), ad.Variable("w")
    y = maxpool2d_op(ad.relu_op(x), kernel, stride, padding)
    (grad,) = ad.gradients(ad.sum_op(y * weight), [x])
    side = (16 + 2 * padding - kernel) // stride + 1
    weights = rng.normal(size=(2, 4, side, side)).astype(np.float32)
    executor = ad.Executor([y, grad])
    first = executor.run({x: images, weight: weights}, convert_to_numpy_ret_vals=True)
    again = executor.run({x: images, weight: weights}, convert_to_numpy_ret_vals=True)
    reference = torch.from_numpy(images).requires_grad_()
    pooled = torch.nn.functional.max_pool2d(torch.relu(reference), kernel, stride, padding)
    (pooled * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(first[0], pooled.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(first[1], reference.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(first[1], again[1])
