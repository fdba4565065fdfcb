"""Convolutions of NCHW images with OIHW filters, strided and padded, and their adjoints.

``conv2d_op(x, w)`` has two gradient operators of its own, ``conv2d_grad_input_op`` and
``conv2d_grad_weight_op``: each is bilinear in its two inputs, so their gradients are the
convolution and the other adjoint again, and every derivative of a convolution stays a graph
node with a shape rule and a kernel.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dlsys.errors import ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import Pair, adjoint_shape, apply_rule, conv2d_shape, window_pair


def window_attrs(where: str, stride, padding) -> dict:
    """The ``stride`` and ``padding`` attributes of a window operator, as checked pairs; a
    bad value is refused where the node is built, naming it."""
    try:
        return {"stride": window_pair("stride", stride, 1),
                "padding": window_pair("padding", padding, 0)}
    except ShapeError as err:
        raise ShapeError(f"{where}: {err}") from None


def describe_window(node: Node, defaults: dict) -> str:
    """``Name(inputs, attr=value...)``, naming only the attributes that differ from
    ``defaults`` (so a plain ``Conv2d(x, w)`` reads as before)."""
    args = [short_name(i) for i in node.inputs]
    args += [f"{k}={v}" for k, v in node.attrs.items() if defaults.get(k) != v]
    return f"{node.op.name}({', '.join(args)})"


def pad_images(x: np.ndarray, padding: Pair, value: float = 0.0) -> np.ndarray:
    """``x`` (NCHW) with ``padding`` rows and columns of ``value`` on each side."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def windows(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair,
            value: float = 0.0) -> np.ndarray:
    """Every window of the padded images: (N, C, H', W', kh, kw), a view."""
    view = sliding_window_view(pad_images(x, padding, value), kernel, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1]]


def scatter_windows(per_window: np.ndarray, shape_x: tuple, stride: Pair,
                    padding: Pair) -> np.ndarray:
    """The adjoint of ``windows``: each window's values (N, C, H', W', kh, kw) added back at
    the image positions they came from, padding dropped."""
    n, c, oh, ow, kh, kw = per_window.shape
    (sh, sw), (ph, pw) = stride, padding
    out = np.zeros((n, c, shape_x[2] + 2 * ph, shape_x[3] + 2 * pw))
    for ky in range(kh):
        for kx in range(kw):
            out[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw] += per_window[..., ky, kx]
    return out[:, :, ph:ph + shape_x[2], pw:pw + shape_x[3]]


class _ConvFamilyOp(Op):
    """Shared by the convolution and its adjoints: stride and padding attributes."""

    defaults = {"stride": (1, 1), "padding": (0, 0)}

    def describe(self, node):
        return describe_window(node, self.defaults)

    def _window(self, node) -> tuple[Pair, Pair]:
        return node.attrs["stride"], node.attrs["padding"]


class Conv2dOp(_ConvFamilyOp):
    """``y = x * w``: cross-correlation of NCHW images ``x`` with OIHW filters ``w`` (as in
    PyTorch), with ``stride`` and zero ``padding`` (each an int or an (h, w) pair)."""

    name = "Conv2d"
    # A per-channel bias and an activation after it run in the convolution's write-back.
    fusion_anchor = True

    def __call__(self, x: Node, w: Node, stride=1, padding=0) -> Node:
        inputs = [check_node(self.name, "x", x), check_node(self.name, "w", w)]
        where = f"Conv2d({short_name(x)}, {short_name(w)})"
        return Node(self, inputs, window_attrs(where, stride, padding))

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, conv2d_shape, *input_shapes, *self._window(node))

    def gradient(self, node, output_grad):
        x, w = node.inputs
        stride, padding = self._window(node)
        return [conv2d_grad_input_op(output_grad, w, x, stride, padding),
                conv2d_grad_weight_op(x, output_grad, w, stride, padding)]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("conv2d", (*(tuple(s) for s in input_shapes), tuple(output_shape),
                                     *self._window(node)))

    def fused_kernel_spec(self, node, shapes, epilogue):
        params = self.kernel_spec(node, [shapes[i] for i in node.inputs], shapes[node]).params
        return KernelSpec("conv2d_epilogue", (*params, tuple(epilogue)))

    def reference(self, node, x, w):
        return np.einsum("bchwij,ocij->bohw", windows(x, w.shape[2:], *self._window(node)), w)


class _ConvAdjointOp(_ConvFamilyOp):
    """An adjoint of the convolution: the output's gradient ``g`` taken back to one of its
    inputs, whose node is the last input and lends its shape only. ``inputs`` names the
    three inputs (of ``x``, ``w`` and ``g``) in order; ``kind`` is the kernel."""

    inputs = ("", "", "")
    kind = ""

    def __call__(self, a: Node, b: Node, shape_of: Node, stride=1, padding=0) -> Node:
        nodes = [check_node(self.name, name, v) for name, v in zip(self.inputs, (a, b, shape_of))]
        return Node(self, nodes, window_attrs(self.name, stride, padding))

    def kernel_inputs(self, node):
        return node.inputs[:2]

    def _rule(self, node, *shapes):
        named = dict(zip(self.inputs, shapes))
        forward = conv2d_shape(named["x"], named["w"], *self._window(node))
        return adjoint_shape(forward, named["g"], shapes[2])

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._rule, node, *input_shapes)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec(self.kind, (*(tuple(s) for s in input_shapes[:2]),
                                      tuple(output_shape), *self._window(node)))


class Conv2dGradInputOp(_ConvAdjointOp):
    """``dx`` from ``(g, w, x)``: the gradient ``g`` of a convolution's output taken back to
    its images, for filters ``w``."""

    name = "Conv2dGradInput"
    inputs = ("g", "w", "x")
    kind = "conv2d_grad_input"
    # The relu gradient of the layer below (conv-relu-conv, taken back) runs in its kernel.
    fusion_anchor = True

    def fused_kernel_spec(self, node, shapes, epilogue):
        params = self.kernel_spec(node, [shapes[i] for i in node.inputs], shapes[node]).params
        return KernelSpec("conv2d_grad_input_epilogue", (*params, tuple(epilogue)))

    def gradient(self, node, output_grad):
        # <dx(g, w), h> = <g, conv(h, w)>: linear in g and in w separately.
        g, w, x = node.inputs
        stride, padding = self._window(node)
        return [conv2d_op(output_grad, w, stride, padding),
                conv2d_grad_weight_op(output_grad, g, w, stride, padding), None]

    def reference(self, node, g, w, x):
        per_window = np.einsum("bohw,ocij->bchwij", g, w)
        return scatter_windows(per_window, x.shape, *self._window(node))


class Conv2dGradWeightOp(_ConvAdjointOp):
    """``dw`` from ``(x, g, w)``: the gradient ``g`` of a convolution's output taken back to
    its filters, for images ``x``."""

    name = "Conv2dGradWeight"
    inputs = ("x", "g", "w")
    kind = "conv2d_grad_weight"

    def gradient(self, node, output_grad):
        # <dw(x, g), h> = <g, conv(x, h)>: linear in x and in g separately.
        x, g, w = node.inputs
        stride, padding = self._window(node)
        return [conv2d_grad_input_op(g, output_grad, x, stride, padding),
                conv2d_op(x, output_grad, stride, padding), None]

    def reference(self, node, x, g, w):
        return np.einsum("bchwij,bohw->ocij", windows(x, w.shape[2:], *self._window(node)), g)


conv2d_op = Conv2dOp()
conv2d_grad_input_op = Conv2dGradInputOp()
conv2d_grad_weight_op = Conv2dGradWeightOp()
