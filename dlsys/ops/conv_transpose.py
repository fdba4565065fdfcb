"""The transposed convolution (a "deconvolution", ONNX's ConvTranspose): the adjoint of a
convolution's data gradient, so it runs the kernel of ``conv2d_grad_input``.

``conv_transpose2d_op(x, w)`` takes NCHW images ``x`` of ``C_in`` channels and filters ``w``
of shape ``(C_in, C_out / groups, kh, kw)`` (PyTorch's and ONNX's layout) and gives what a
convolution with the same filters, stride, padding, dilation and groups would send back to
its input from an output gradient ``x``: images of ``C_out`` channels, each axis
``stride * (n - 1) + output_padding + (k - 1) * dilation + 1 - padding - padding_end`` long.
Its gradients are that convolution (for ``x``) and the convolution's weight adjoint (for
``w``), so every derivative stays a node with a kernel.
"""

from __future__ import annotations

import numpy as np

from dlsys.errors import ShapeError
from dlsys.graph import Node, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.conv import (
    ConvFamilyOp,
    Pair,
    conv2d_grad_weight_op,
    conv2d_op,
    conv_attrs,
    describe_window,
    grouped_channels,
    scatter_windows,
)
from dlsys.ops.shapes import apply_rule, window_pair


def conv_transpose2d_shape(shape_x, shape_w, stride: Pair, padding: Pair, padding_end: Pair,
                           dilation: Pair, groups: int, output_padding: Pair) -> tuple:
    """(N, C_out, H', W') of a transposed convolution (see the module's docstring)."""
    if len(shape_x) != 4 or len(shape_w) != 4:
        raise ShapeError("images and filters must be 4-d (NCHW, and C_in x C_out/groups x kh "
                         "x kw)")
    if shape_x[1] != shape_w[0]:
        raise ShapeError(f"images have {shape_x[1]} channels but the filters take "
                         f"{shape_w[0]}")
    if shape_w[0] % groups:
        raise ShapeError(f"{shape_w[0]} input channels do not split into {groups} groups")
    size = tuple(stride[a] * (shape_x[2 + a] - 1) + output_padding[a]
                 + (shape_w[2 + a] - 1) * dilation[a] + 1 - padding[a] - padding_end[a]
                 for a in range(2))
    if min(size) < 1:
        raise ShapeError(f"the padding {tuple(padding)} and {tuple(padding_end)} crops the "
                         f"whole output ({size})")
    return (shape_x[0], shape_w[1] * groups, *size)


class ConvTranspose2dOp(ConvFamilyOp):
    """``y = conv_transpose(x, w)``: the images a convolution's data gradient gives from
    ``x`` (see the module's docstring); ``output_padding`` adds rows and columns at the end
    that no stride reaches."""

    name = "ConvTranspose2d"
    # A bias per channel and an activation run in the kernel's write-back, as for Conv2d.
    fusion_anchor = True

    def __call__(self, x: Node, w: Node, stride=1, padding=0, output_padding=0, dilation=1,
                 groups: int = 1, padding_end=None) -> Node:
        inputs = [check_node(self.name, "x", x), check_node(self.name, "w", w)]
        where = f"{self.name}({short_name(x)}, {short_name(w)})"
        attrs = conv_attrs(where, stride, padding, padding_end, dilation, groups)
        try:
            extra = window_pair("output_padding", output_padding, 0)
        except ShapeError as err:
            raise ShapeError(f"{where}: {err}") from None
        if any(e >= s for e, s in zip(extra, attrs["stride"])):
            raise ShapeError(f"{where}: output_padding {extra} must be below the stride "
                             f"{attrs['stride']}")
        return Node(self, inputs, {**attrs, "output_padding": extra})

    def describe(self, node):
        return describe_window(node, {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
                                      "groups": 1, "padding_end": node.attrs["padding"],
                                      "output_padding": (0, 0)})

    def _options(self, node) -> dict:
        return {k: v for k, v in node.attrs.items() if k != "output_padding"}

    def infer_shape(self, node, input_shapes):
        a = node.attrs
        return apply_rule(node, input_shapes, conv_transpose2d_shape, *input_shapes,
                          a["stride"], a["padding"], a["padding_end"], a["dilation"],
                          a["groups"], a["output_padding"])

    def gradient(self, node, output_grad):
        # y = A(x) for the convolution's data adjoint A, so dx = conv(g) and dw is the
        # convolution's weight adjoint with g as its images and x as its output gradient.
        x, w = node.inputs
        options = self._options(node)
        return [conv2d_op(output_grad, w, **options),
                conv2d_grad_weight_op(output_grad, x, w, **options)]

    def kernel_spec(self, node, input_shapes, output_shape):
        return self._spec(node, "conv2d_grad_input", (*(tuple(s) for s in input_shapes),
                                                      tuple(output_shape)))

    def fused_kernel_spec(self, node, shapes, epilogue):
        spec = self.kernel_spec(node, [shapes[i] for i in node.inputs], shapes[node])
        return KernelSpec(f"{spec.kind}_epilogue", (*spec.params, tuple(epilogue)))

    def reference(self, node, x, w):
        a = node.attrs
        groups = a["groups"]
        per_window = np.einsum("bgohw,gocij->bgchwij", grouped_channels(x, groups),
                               w.reshape(groups, -1, *w.shape[1:]))
        per_window = per_window.reshape(x.shape[0], -1, *per_window.shape[3:])
        out = self.infer_shape(node, [x.shape, w.shape])
        return scatter_windows(per_window, out, a["stride"], a["padding"], a["dilation"])


conv_transpose2d_op = ConvTranspose2dOp()
