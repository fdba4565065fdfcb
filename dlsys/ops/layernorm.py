"""Layer normalisation over the last axis of a tensor of any rank, as PyTorch's
``layer_norm(x, (C,), gamma, beta, eps)``.

The forward pass is one operator; its adjoints in ``x`` and ``gamma`` are operators of
their own whose kernels recompute each row's statistics from ``x`` (so no normalised copy
of ``x`` stays alive for the backward pass); that in ``beta`` is the sum of the upstream
gradient over the rows (``reducesumto_op``).
"""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_constant
from dlsys.errors import ArgumentError, GradientError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.reduce import reducesumto_op
from dlsys.ops.shapes import inputs_text


def _check_rows(node: Node, input_shapes, parameters=()) -> tuple[int, ...]:
    """Input 0's shape, after checking that it has a last axis and that the inputs at
    ``parameters`` are vectors of its length, and any other input has its shape."""
    shape = tuple(input_shapes[0])
    if not shape:
        raise ShapeError(f"{node.name}: layer norm needs a last axis to normalise over; "
                         f"{node.inputs[0].name} is a scalar")
    for i, other in enumerate(input_shapes[1:], start=1):
        want = (shape[-1],) if i in parameters else shape
        if tuple(other) != want:
            raise ShapeError(f"{node.name}: {node.inputs[i].name} must have shape {want} for "
                             f"{node.inputs[0].name} of shape {shape} "
                             f"({inputs_text(node, input_shapes)})")
    return shape


def _x_hat(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=-1, keepdims=True)
    inv_std = 1 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    return (x - mean) * inv_std, inv_std


class LayerNormOp(Op):
    """``(x - mean) / sqrt(var + eps) * gamma + beta``, mean and biased variance over the
    last axis of ``x``; ``gamma`` and ``beta`` of shape (C,)."""

    name = "LayerNorm"
    # Its kernel reads a row (all of it, for the statistics) before it writes that row.
    inplace_input = 0

    def __call__(self, x: Node, gamma: Node, beta: Node, eps: float = 1e-5) -> Node:
        nodes = [check_node(self.name, what, value)
                 for what, value in (("x", x), ("gamma", gamma), ("beta", beta))]
        eps = check_constant(f"{self.name}({nodes[0].name}): eps", eps)
        if eps <= 0:
            raise ArgumentError(f"{self.name}({nodes[0].name}): eps must be positive, got {eps}")
        return Node(self, nodes, {"eps": eps})

    def describe(self, node):
        return f"LayerNorm({short_name(node.inputs[0])})"

    def infer_shape(self, node, input_shapes):
        return _check_rows(node, input_shapes, parameters=(1, 2))

    def gradient(self, node, output_grad):
        x, gamma, beta = node.inputs
        eps = node.attrs["eps"]
        return [layernorm_gradient_op(output_grad, x, gamma, eps),
                layernorm_scale_gradient_op(output_grad, x, eps),
                reducesumto_op(output_grad, beta)]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("layernorm", (tuple(output_shape), node.attrs["eps"]))

    def reference(self, node, x, gamma, beta):
        return _x_hat(x, node.attrs["eps"])[0] * gamma + beta


class LayerNormGradientOp(Op):
    """The adjoint of ``LayerNorm`` in ``x`` for the upstream gradient ``g``:
    ``inv_std * (h - mean(h) - x_hat * mean(h * x_hat))`` with ``h = g * gamma``."""

    name = "LayerNormGrad"
    inplace_input = 0  # g: each row's sums are taken before the row is written

    def __call__(self, g: Node, x: Node, gamma: Node, eps: float) -> Node:
        return Node(self, [g, x, gamma], {"eps": eps})

    def infer_shape(self, node, input_shapes):
        return _check_rows(node, input_shapes, parameters=(2,))

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: layer norm has no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("layernorm_gradient", (tuple(output_shape), node.attrs["eps"]))

    def reference(self, node, g, x, gamma):
        x_hat, inv_std = _x_hat(x, node.attrs["eps"])
        h = g * gamma
        return inv_std * (h - h.mean(axis=-1, keepdims=True)
                          - x_hat * (h * x_hat).mean(axis=-1, keepdims=True))


class LayerNormScaleGradientOp(Op):
    """The adjoint of ``LayerNorm`` in ``gamma``: ``sum(g * x_hat)`` over every axis but the
    last, shaped (C,)."""

    name = "LayerNormScaleGrad"

    def __call__(self, g: Node, x: Node, eps: float) -> Node:
        return Node(self, [g, x], {"eps": eps})

    def infer_shape(self, node, input_shapes):
        return (_check_rows(node, input_shapes)[-1],)

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: layer norm has no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("layernorm_scale_gradient", (tuple(input_shapes[0]),
                                                       node.attrs["eps"]))

    def reference(self, node, g, x):
        x_hat, _ = _x_hat(x, node.attrs["eps"])
        return (g * x_hat).reshape(-1, x.shape[-1]).sum(axis=0)


layernorm_op = LayerNormOp()
layernorm_gradient_op = LayerNormGradientOp()
layernorm_scale_gradient_op = LayerNormScaleGradientOp()

__all__ = ["LayerNormOp", "LayerNormGradientOp", "LayerNormScaleGradientOp", "layernorm_op",
           "layernorm_gradient_op", "layernorm_scale_gradient_op"]
