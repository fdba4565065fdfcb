"""Local response normalisation across channels (AlexNet's, GoogLeNet's; ONNX's ``LRN``),
and its adjoint, for tensors (N, C, ...) of any rank of at least 2."""

from __future__ import annotations

import numbers

import numpy as np

from dlsys.checks import check_constant
from dlsys.errors import ArgumentError, GradientError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text


def _window_squares(x: np.ndarray, size: int) -> np.ndarray:
    """Each channel's sum of ``x ** 2`` over its window (``kernels.norm.lrn``)."""
    lo = (size - 1) // 2
    hi = size - 1 - lo
    squares = x * x
    total = np.zeros_like(x)
    for c in range(x.shape[1]):
        total[:, c] = squares[:, max(0, c - lo):c + hi + 1].sum(axis=1)
    return total


def _check_shape(node: Node, shape) -> tuple[int, ...]:
    if len(shape) < 2:
        raise ShapeError(f"{node.name}: LRN normalises across the channels of a tensor "
                         f"(N, C, ...), got shape {tuple(shape)} for {node.inputs[0].name}")
    return tuple(shape)


class LRNOp(Op):
    """``x / (bias + alpha / size * S) ** beta``, ``S`` the sum of ``x ** 2`` over the
    ``size`` channels around each one (those that exist); ONNX's window, which for an even
    ``size`` reaches one channel further forward than back."""

    name = "LRN"

    def __call__(self, x: Node, size: int, alpha: float = 1e-4, beta: float = 0.75,
                 bias: float = 1.0) -> Node:
        x = check_node(self.name, "x", x)
        where = f"{self.name}({x.name})"
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ArgumentError(f"{where}: size must be a positive int, got {size!r}")
        attrs = {"size": int(size), "alpha": check_constant(f"{where}: alpha", alpha),
                 "beta": check_constant(f"{where}: beta", beta),
                 "bias": check_constant(f"{where}: bias", bias)}
        if attrs["bias"] <= 0:
            # The base of the power must stay positive, whatever x is.
            raise ArgumentError(f"{where}: bias must be positive, got {bias!r}")
        if attrs["alpha"] < 0:
            raise ArgumentError(f"{where}: alpha must be non-negative, got {alpha!r}")
        return Node(self, [x], attrs)

    def describe(self, node):
        return f"LRN({short_name(node.inputs[0])}, size={node.attrs['size']})"

    def infer_shape(self, node, input_shapes):
        return _check_shape(node, input_shapes[0])

    def gradient(self, node, output_grad):
        return [lrn_gradient_op(output_grad, node.inputs[0], node.attrs)]

    def kernel_spec(self, node, input_shapes, output_shape):
        a = node.attrs
        return KernelSpec("lrn", (tuple(output_shape), a["size"], a["alpha"], a["beta"],
                                  a["bias"]))

    def reference(self, node, x):
        a = node.attrs
        d = a["bias"] + a["alpha"] / a["size"] * _window_squares(x, a["size"])
        return x * d ** -a["beta"]


class LRNGradientOp(Op):
    """The adjoint of ``LRN`` in ``x`` for the upstream gradient ``g``."""

    name = "LRNGrad"

    def __call__(self, g: Node, x: Node, attrs: dict) -> Node:
        return Node(self, [g, x], dict(attrs))

    def infer_shape(self, node, input_shapes):
        if tuple(input_shapes[0]) != tuple(input_shapes[1]):
            raise ShapeError(f"{node.name}: shapes differ ({inputs_text(node, input_shapes)})")
        return _check_shape(node, input_shapes[1])

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: LRN has no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        a = node.attrs
        return KernelSpec("lrn_gradient", (tuple(output_shape), a["size"], a["alpha"],
                                           a["beta"], a["bias"]))

    def reference(self, node, g, x):
        a = node.attrs
        size, beta = a["size"], a["beta"]
        d = a["bias"] + a["alpha"] / size * _window_squares(x, size)
        weighted = g * x * d ** (-beta - 1)
        lo = (size - 1) // 2
        hi = size - 1 - lo
        spread = np.zeros_like(x)
        for c in range(x.shape[1]):  # the channels whose window holds c: c - hi to c + lo
            spread[:, c] = weighted[:, max(0, c - hi):c + lo + 1].sum(axis=1)
        return g * d ** -beta - 2 * a["alpha"] * beta / size * x * spread


lrn_op = LRNOp()
lrn_gradient_op = LRNGradientOp()

__all__ = ["LRNOp", "LRNGradientOp", "lrn_op", "lrn_gradient_op"]
