"""Pooling over NCHW images: max and average over sliding windows, the global average, and
the adjoints of the window pools.

``kernel_size``, ``stride`` (default: the kernel size) and ``padding`` are each an int or an
(h, w) pair, as in PyTorch; max pooling pads with -inf, average pooling with zeros that count
in the mean (PyTorch's ``count_include_pad=True``).
"""

from __future__ import annotations

import numpy as np

from dlsys.errors import ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.conv import describe_window, scatter_windows, window_attrs, windows
from dlsys.ops.reduce import ReduceAxesOp
from dlsys.ops.shapes import (
    Pair,
    adjoint_shape,
    apply_rule,
    global_pool_shape,
    pool2d_shape,
    window_pair,
)


def pool_attrs(where: str, kernel_size, stride, padding) -> dict:
    """``kernel``, ``stride`` and ``padding`` as checked pairs, the stride defaulting to the
    kernel (windows side by side)."""
    try:
        kernel = window_pair("kernel_size", kernel_size, 1)
    except ShapeError as err:
        raise ShapeError(f"{where}: {err}") from None
    return {"kernel": kernel, **window_attrs(where, kernel if stride is None else stride, padding)}


class _PoolFamilyOp(Op):
    """Shared by the window pools and their adjoints: ``kernel``, ``stride``, ``padding``."""

    kind = ""

    def describe(self, node):
        return describe_window(node, {"kernel": None, "stride": node.attrs["kernel"],
                                      "padding": (0, 0)})

    def _window(self, node) -> tuple[Pair, Pair, Pair]:
        return node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]

    def _forward_shape(self, node, shape_x):
        return pool2d_shape(shape_x, *self._window(node))

    def kernel_spec(self, node, input_shapes, output_shape):
        shapes = [tuple(s) for s in input_shapes[:len(self.kernel_inputs(node))]]
        return KernelSpec(self.kind, (*shapes, tuple(output_shape), *self._window(node)))


class _PoolOp(_PoolFamilyOp):
    """``pool(x)`` over every window."""

    def __call__(self, x: Node, kernel_size, stride=None, padding=0) -> Node:
        where = f"{self.name}({short_name(x)})"
        return Node(self, [check_node(self.name, "x", x)],
                    pool_attrs(where, kernel_size, stride, padding))

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._forward_shape, node, input_shapes[0])


class _PoolGradOp(_PoolFamilyOp):
    """A window pool's adjoint: gradient ``g`` of its output back to its input ``x``'s shape."""

    def __call__(self, a: Node, b: Node, kernel, stride, padding) -> Node:
        inputs = [check_node(self.name, "input 0", a), check_node(self.name, "input 1", b)]
        return Node(self, inputs, pool_attrs(self.name, kernel, stride, padding))

    def _x_and_g(self, shapes) -> tuple:
        raise NotImplementedError

    def _rule(self, node, *shapes):
        shape_x, shape_g = self._x_and_g(shapes)
        return adjoint_shape(self._forward_shape(node, shape_x), shape_g, shape_x)

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._rule, node, *input_shapes)


class MaxPool2dOp(_PoolOp):
    """The maximum of each window."""

    name = "MaxPool2d"
    kind = "max_pool2d"

    def gradient(self, node, output_grad):
        return [maxpool2d_grad_op(node.inputs[0], output_grad, *self._window(node))]

    def reference(self, node, x):
        return windows(x, *self._window(node), value=-np.inf).max(axis=(-2, -1))


class MaxPool2dGradOp(_PoolGradOp):
    """``dx`` of max pooling, from ``(x, g)``: each window's gradient goes to the window's
    first maximum in ``x``, as in PyTorch. Its own gradient in ``g`` would need a gather by
    those positions, not built yet, so it has none (a ``GradientError``)."""

    name = "MaxPool2dGrad"
    kind = "max_pool2d_grad"
    # The relu gradient after it (a CNN's conv-relu-pool, taken back) runs in its kernel.
    fusion_anchor = True

    def _x_and_g(self, shapes):
        return shapes

    def fused_kernel_spec(self, node, shapes, epilogue):
        spec = self.kernel_spec(node, [shapes[i] for i in node.inputs], shapes[node])
        return KernelSpec("max_pool2d_grad_epilogue", (*spec.params, tuple(epilogue)))

    def reference(self, node, x, g):
        kernel, stride, padding = self._window(node)
        flat = windows(x, kernel, stride, padding, value=-np.inf)
        flat = flat.reshape(*flat.shape[:4], -1)
        first = np.argmax(flat, axis=-1)  # numpy's argmax is the first maximum
        chosen = np.arange(flat.shape[-1]) == first[..., None]
        per_window = (chosen * g[..., None]).reshape(*g.shape, *kernel)
        return scatter_windows(per_window, x.shape, stride, padding)


class AvgPool2dOp(_PoolOp):
    """The mean of each window, padding counted as zeros."""

    name = "AvgPool2d"
    kind = "avg_pool2d"

    def gradient(self, node, output_grad):
        return [avgpool2d_grad_op(output_grad, node.inputs[0], *self._window(node))]

    def reference(self, node, x):
        return windows(x, *self._window(node)).mean(axis=(-2, -1))


class AvgPool2dGradOp(_PoolGradOp):
    """``dx`` of average pooling, from ``(g, x)``; ``x`` lends its shape only. Linear in
    ``g``, its gradient is the average pooling again."""

    name = "AvgPool2dGrad"
    kind = "avg_pool2d_grad"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def _x_and_g(self, shapes):
        return shapes[1], shapes[0]

    def gradient(self, node, output_grad):
        return [avgpool2d_op(output_grad, *self._window(node)), None]

    def reference(self, node, g, x):
        kernel, stride, padding = self._window(node)
        per_window = np.broadcast_to(g[..., None, None] / (kernel[0] * kernel[1]),
                                     (*g.shape, *kernel))
        return scatter_windows(per_window, x.shape, stride, padding)


class GlobalAvgPoolOp(ReduceAxesOp):
    """``(N, C, H, W) -> (N, C, 1, 1)``: the mean of each image channel, which is a mean over
    axes (2, 3) kept as size 1, so its kernel and gradient are the mean's."""

    def __init__(self):
        super().__init__("GlobalAvgPool", mean=True)

    def __call__(self, x: Node) -> Node:
        return Node(self, [check_node(self.name, "x", x)], {"axes": (2, 3), "keepdims": True})

    def describe(self, node):
        return f"{self.name}({short_name(node.inputs[0])})"

    def infer_shape(self, node, input_shapes):
        apply_rule(node, input_shapes, global_pool_shape, input_shapes[0])
        return super().infer_shape(node, input_shapes)


maxpool2d_op = MaxPool2dOp()
maxpool2d_grad_op = MaxPool2dGradOp()
avgpool2d_op = AvgPool2dOp()
avgpool2d_grad_op = AvgPool2dGradOp()
global_avgpool_op = GlobalAvgPoolOp()
