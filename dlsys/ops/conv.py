"""Convolutions of NCHW images with OIHW filters, strided, padded (each side of an axis by
its own amount), dilated and grouped, and their adjoints.

``conv2d_op(x, w)`` has two gradient operators of its own, ``conv2d_grad_input_op`` and
``conv2d_grad_weight_op``: each is bilinear in its two inputs, so their gradients are the
convolution and the other adjoint again, and every derivative of a convolution stays a graph
node with a shape rule and a kernel.

A grouped convolution (``groups`` > 1, as in ResNeXt, ShuffleNet and RegNet) splits the
channels into that many groups, each convolved with its own share of the filters; with one
channel per group and one filter per channel it is *depthwise* (MobileNet, EfficientNet),
which runs a kernel of its own (``dlsys.kernels.conv.depthwise``). ``padding`` pads the
start of each axis and ``padding_end`` (by default the same) its end; the kernels need only
the start, since the output's shape fixes how far the windows reach.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.conv import packed as packed_layouts
from dlsys.kernels.conv import winograd as winograd_layouts
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.layout import ConstantLayoutOp
from dlsys.ops.shapes import Pair, adjoint_shape, apply_rule, conv2d_shape, window_pair


def window_attrs(where: str, stride, padding) -> dict:
    """The ``stride`` and ``padding`` attributes of a window operator, as checked pairs; a
    bad value is refused where the node is built, naming it."""
    try:
        return {"stride": window_pair("stride", stride, 1),
                "padding": window_pair("padding", padding, 0)}
    except ShapeError as err:
        raise ShapeError(f"{where}: {err}") from None


def conv_attrs(where: str, stride, padding, padding_end, dilation, groups) -> dict:
    """``window_attrs`` and a convolution's ``padding_end`` (None: as ``padding``),
    ``dilation`` and ``groups``, checked where the node is built."""
    attrs = window_attrs(where, stride, padding)
    try:
        attrs["padding_end"] = (attrs["padding"] if padding_end is None
                                else window_pair("padding_end", padding_end, 0))
        attrs["dilation"] = window_pair("dilation", dilation, 1)
    except ShapeError as err:
        raise ShapeError(f"{where}: {err}") from None
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise ArgumentTypeError(f"{where}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ShapeError(f"{where}: groups must be positive, got {groups}")
    attrs["groups"] = int(groups)
    return attrs


def window_size(size: int, kernel: int, stride: int, begin: int, end: int, dilation: int = 1,
                ceil: bool = False) -> int:
    """How many places a ``kernel`` dilated by ``dilation`` takes sliding by ``stride`` over
    ``size`` elements padded by ``begin`` and ``end``; with ``ceil``, a last partial window
    counts too when it starts inside the image or its start padding (ONNX's and PyTorch's
    ``ceil_mode``). Below 1 when the window is larger than the padded axis."""
    span = size + begin + end - (kernel - 1) * dilation - 1
    if span < 0:
        return 0
    if not ceil:
        return span // stride + 1
    count = -(-span // stride) + 1
    return count - 1 if (count - 1) * stride >= size + begin else count


def grouped_conv2d_shape(shape_x: Sequence[int], shape_f: Sequence[int], stride: Pair,
                         padding: Pair, padding_end: Pair, dilation: Pair, groups: int):
    """The output shape of a convolution with every option: ``conv2d_shape``'s rule with
    each side padded on its own, dilated filters and ``groups`` groups of channels."""
    if len(shape_x) != 4 or len(shape_f) != 4:
        raise ShapeError("images and filters must be 4-d (NCHW, OIHW)")
    if shape_x[1] != shape_f[1] * groups:
        raise ShapeError(f"images have {shape_x[1]} channels but {groups} groups of filters "
                         f"of {shape_f[1]} channels expect {shape_f[1] * groups}")
    if shape_f[0] % groups:
        raise ShapeError(f"{shape_f[0]} filters do not split into {groups} groups")
    size = tuple(window_size(shape_x[2 + a], shape_f[2 + a], stride[a], padding[a],
                             padding_end[a], dilation[a]) for a in range(2))
    if min(size) < 1:
        raise ShapeError(f"filter {tuple(shape_f)} dilated by {tuple(dilation)} is larger than "
                         f"the image {tuple(shape_x[2:])} padded by {tuple(padding)} and "
                         f"{tuple(padding_end)}")
    return (shape_x[0], shape_f[0], *size)


def describe_window(node: Node, defaults: dict) -> str:
    """``Name(inputs, attr=value...)``, naming only the attributes that differ from
    ``defaults`` (so a plain ``Conv2d(x, w)`` reads as before)."""
    args = [short_name(i) for i in node.inputs]
    args += [f"{k}={v}" for k, v in node.attrs.items() if defaults.get(k) != v]
    return f"{node.op.name}({', '.join(args)})"


def pad_images(x: np.ndarray, padding: Pair, value: float = 0.0,
               padding_end: Pair | None = None) -> np.ndarray:
    """``x`` (NCHW) with ``padding`` rows and columns of ``value`` before it and
    ``padding_end`` (by default as many) after it."""
    (ph, pw), (eh, ew) = padding, padding_end or padding
    return np.pad(x, ((0, 0), (0, 0), (ph, eh), (pw, ew)), constant_values=value)


def windows(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, value: float = 0.0,
            padding_end: Pair | None = None, dilation: Pair = (1, 1)) -> np.ndarray:
    """Every window of the padded images: (N, C, H', W', kh, kw), a view; a dilated window
    takes every ``dilation``-th element of its span."""
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    view = sliding_window_view(pad_images(x, padding, value, padding_end), span, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def scatter_windows(per_window: np.ndarray, shape_x: tuple, stride: Pair, padding: Pair,
                    dilation: Pair = (1, 1)) -> np.ndarray:
    """The adjoint of ``windows``: each window's values (N, C, H', W', kh, kw) added back at
    the image positions they came from, padding dropped."""
    n, c, oh, ow, kh, kw = per_window.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out = np.zeros((n, c, max(shape_x[2] + ph, (oh - 1) * sh + (kh - 1) * dh + 1),
                    max(shape_x[3] + pw, (ow - 1) * sw + (kw - 1) * dw + 1)))
    for ky in range(kh):
        for kx in range(kw):
            out[:, :, ky * dh:ky * dh + sh * oh:sh, kx * dw:kx * dw + sw * ow:sw] += \
                per_window[..., ky, kx]
    return out[:, :, ph:ph + shape_x[2], pw:pw + shape_x[3]]


def grouped_channels(images: np.ndarray, groups: int) -> np.ndarray:
    """(N, C, ...) as (N, groups, C / groups, ...)."""
    return images.reshape(images.shape[0], groups, -1, *images.shape[2:])


class ConvFamilyOp(Op):
    """Shared by the convolution and its adjoints: stride, padding (start and end),
    dilation and groups attributes."""

    def describe(self, node):
        return describe_window(node, {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
                                      "groups": 1, "padding_end": node.attrs["padding"]})

    def _window(self, node) -> tuple[Pair, Pair]:
        return node.attrs["stride"], node.attrs["padding"]

    def _options(self, node) -> dict:
        """Every attribute, as the ops of this family take them (``stride=`` ... )."""
        return dict(node.attrs)

    def _plain(self, node) -> bool:
        """Whether ``node`` is an ungrouped, undilated convolution padded alike on both sides
        (the kernels and shape rule every CNN used before groups)."""
        attrs = node.attrs
        return attrs["groups"] == 1 and attrs["dilation"] == (1, 1) \
            and attrs["padding_end"] == attrs["padding"]

    def _forward_shape(self, node, shape_x, shape_f):
        if self._plain(node):
            return conv2d_shape(shape_x, shape_f, *self._window(node))
        a = node.attrs
        return grouped_conv2d_shape(shape_x, shape_f, a["stride"], a["padding"],
                                    a["padding_end"], a["dilation"], a["groups"])

    def flops(self, node, input_shapes, output_shape):
        # A multiply-add per element of the forward convolution's output and tap of its
        # group's filter; the adjoints do the same products in another order.
        named = dict(zip(getattr(self, "inputs", ("x", "w")), input_shapes))
        forward_output = named.get("g", output_shape)
        return 2 * math.prod(forward_output) * math.prod(named["w"][1:])

    def _spec(self, node, kind: str, shapes) -> KernelSpec:
        """The kernel: ``kind`` with the plain parameters, or its ``grouped_`` variant with
        the dilation and groups too (the kernels read only the start padding)."""
        a = node.attrs
        if a["groups"] == 1 and a["dilation"] == (1, 1):
            return KernelSpec(kind, (*shapes, *self._window(node)))
        return KernelSpec(f"grouped_{kind}", (*shapes, *self._window(node), a["dilation"],
                                              a["groups"]))


class Conv2dOp(ConvFamilyOp):
    """``y = x * w``: cross-correlation of NCHW images ``x`` with OIHW filters ``w`` (as in
    PyTorch), with ``stride``, zero ``padding`` (each an int or an (h, w) pair; the end of
    each axis padded by ``padding_end`` when given), ``dilation`` and ``groups``."""

    name = "Conv2d"
    # A per-channel bias and an activation after it run in the convolution's write-back.
    fusion_anchor = True
    # Constant filters (inference) may be laid out once in panels of output channels.
    packable_input = 1
    splits_rows = (0,)  # each image alone

    def __call__(self, x: Node, w: Node, stride=1, padding=0, dilation=1, groups: int = 1,
                 padding_end=None) -> Node:
        inputs = [check_node(self.name, "x", x), check_node(self.name, "w", w)]
        where = f"Conv2d({short_name(x)}, {short_name(w)})"
        return Node(self, inputs, conv_attrs(where, stride, padding, padding_end, dilation,
                                             groups))

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._forward_shape, node, *input_shapes)

    def gradient(self, node, output_grad):
        x, w = node.inputs
        options = self._options(node)
        return [conv2d_grad_input_op(output_grad, w, x, **options),
                conv2d_grad_weight_op(x, output_grad, w, **options)]

    def _is_depthwise(self, node, shape_f) -> bool:
        # One filter of one channel per group: the kernel of its own.
        return node.attrs["groups"] > 1 and shape_f[1] == 1 and shape_f[0] == node.attrs["groups"]

    def kernel_spec(self, node, input_shapes, output_shape):
        shapes = (*(tuple(s) for s in input_shapes), tuple(output_shape))
        if self._is_depthwise(node, input_shapes[1]):
            return KernelSpec("depthwise_conv2d", (*shapes, *self._window(node),
                                                   node.attrs["dilation"]))
        return self._spec(node, "conv2d", shapes)

    def fused_kernel_spec(self, node, shapes, epilogue):
        spec = self.kernel_spec(node, [shapes[i] for i in node.inputs], shapes[node])
        return KernelSpec(f"{spec.kind}_epilogue", (*spec.params, tuple(epilogue)))

    def packed_kernel_spec(self, node, shapes, spec, dtype):
        if spec.kind not in ("conv2d", "conv2d_epilogue"):
            return None  # grouped, dilated and depthwise filters are read as stored
        # The kernel layer says whether the filters are better transformed for Winograd's
        # filtering or packed in panels of channels, and how; the operator only lays them
        # out so.
        layout = spec.packed_layout(dtype)
        if layout is None:
            return None
        epilogue = spec.params[-1] if spec.kind == "conv2d_epilogue" else ()
        how, *fields = layout
        if how == "winograd":
            plan = winograd_layouts.WinogradLayout(*fields)
            return (winograd_filters_op(node.inputs[1], plan.tile, plan.panel),
                    KernelSpec("conv2d_winograd", (*spec.params[:5], tuple(fields), epilogue)))
        tile = packed_layouts.PackedTile(*fields)
        return (pack_filters_op(node.inputs[1], tile.panel),
                KernelSpec("conv2d_prepacked", (*spec.params[:5], tuple(fields), epilogue)))

    def reference(self, node, x, w):
        a = node.attrs
        per_window = windows(x, w.shape[2:], a["stride"], a["padding"],
                             padding_end=a["padding_end"], dilation=a["dilation"])
        groups = a["groups"]
        y = np.einsum("bgchwij,gocij->bgohw", grouped_channels(per_window, groups),
                      w.reshape(groups, -1, *w.shape[1:]))
        return y.reshape(y.shape[0], -1, *y.shape[3:])


class _ConvAdjointOp(ConvFamilyOp):
    """An adjoint of the convolution: the output's gradient ``g`` taken back to one of its
    inputs, whose node is the last input and lends its shape only. ``inputs`` names the
    three inputs (of ``x``, ``w`` and ``g``) in order; ``kind`` is the kernel."""

    inputs = ("", "", "")
    kind = ""

    def __call__(self, a: Node, b: Node, shape_of: Node, stride=1, padding=0, dilation=1,
                 groups: int = 1, padding_end=None) -> Node:
        nodes = [check_node(self.name, name, v) for name, v in zip(self.inputs, (a, b, shape_of))]
        return Node(self, nodes, conv_attrs(self.name, stride, padding, padding_end, dilation,
                                            groups))

    def kernel_inputs(self, node):
        return node.inputs[:2]

    def _rule(self, node, *shapes):
        named = dict(zip(self.inputs, shapes))
        forward = self._forward_shape(node, named["x"], named["w"])
        return adjoint_shape(forward, named["g"], shapes[2])

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._rule, node, *input_shapes)

    def kernel_spec(self, node, input_shapes, output_shape):
        return self._spec(node, self.kind, (*(tuple(s) for s in input_shapes[:2]),
                                            tuple(output_shape)))


class Conv2dGradInputOp(_ConvAdjointOp):
    """``dx`` from ``(g, w, x)``: the gradient ``g`` of a convolution's output taken back to
    its images, for filters ``w``."""

    name = "Conv2dGradInput"
    inputs = ("g", "w", "x")
    kind = "conv2d_grad_input"
    # The relu gradient of the layer below (conv-relu-conv, taken back) runs in its kernel.
    fusion_anchor = True

    def fused_kernel_spec(self, node, shapes, epilogue):
        spec = self.kernel_spec(node, [shapes[i] for i in node.inputs], shapes[node])
        return KernelSpec(f"{spec.kind}_epilogue", (*spec.params, tuple(epilogue)))

    def gradient(self, node, output_grad):
        # <dx(g, w), h> = <g, conv(h, w)>: linear in g and in w separately.
        g, w, x = node.inputs
        options = self._options(node)
        return [conv2d_op(output_grad, w, **options),
                conv2d_grad_weight_op(output_grad, g, w, **options), None]

    def reference(self, node, g, w, x):
        a = node.attrs
        groups = a["groups"]
        per_window = np.einsum("bgohw,gocij->bgchwij", grouped_channels(g, groups),
                               w.reshape(groups, -1, *w.shape[1:]))
        per_window = per_window.reshape(g.shape[0], -1, *per_window.shape[3:])
        return scatter_windows(per_window, x.shape, a["stride"], a["padding"], a["dilation"])


class Conv2dGradWeightOp(_ConvAdjointOp):
    """``dw`` from ``(x, g, w)``: the gradient ``g`` of a convolution's output taken back to
    its filters, for images ``x``."""

    name = "Conv2dGradWeight"
    inputs = ("x", "g", "w")
    kind = "conv2d_grad_weight"

    def gradient(self, node, output_grad):
        # <dw(x, g), h> = <g, conv(x, h)>: linear in x and in g separately.
        x, g, w = node.inputs
        options = self._options(node)
        return [conv2d_grad_input_op(g, output_grad, x, **options),
                conv2d_op(x, output_grad, **options), None]

    def reference(self, node, x, g, w):
        a = node.attrs
        groups = a["groups"]
        per_window = windows(x, w.shape[2:], a["stride"], a["padding"],
                             padding_end=a["padding_end"], dilation=a["dilation"])
        dw = np.einsum("bgchwij,bgohw->gocij", grouped_channels(per_window, groups),
                       grouped_channels(g, groups))
        return dw.reshape(w.shape)


class PackFiltersOp(ConstantLayoutOp):
    """OIHW filters ``w`` as panels of ``panel`` output channels, shape
    (ceil(O / panel), I * H * W, panel), the last one zero-filled: the layout the
    channel-vectorised convolution reads (``dlsys.kernels.conv.packed``). Made by the
    constant-packing pass (``passes.prepack``) after differentiation, so it has no
    gradient."""

    name = "PackFilters"

    def __call__(self, w: Node, panel: int) -> Node:
        return Node(self, [check_node(self.name, "w", w)], {"panel": int(panel)})

    def infer_shape(self, node, input_shapes):
        (shape_w,) = input_shapes
        if len(shape_w) != 4:
            raise ShapeError(f"{node.name}: filters must be 4-d (OIHW), got {tuple(shape_w)}")
        panel = node.attrs["panel"]
        return (-(-shape_w[0] // panel), math.prod(shape_w[1:]), panel)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("pack_filters", (tuple(input_shapes[0]), node.attrs["panel"]))

    def reference(self, node, w):
        panel = node.attrs["panel"]
        rows = w.reshape(w.shape[0], -1)
        padded = np.zeros((-(-w.shape[0] // panel) * panel, rows.shape[1]), dtype=w.dtype)
        padded[:w.shape[0]] = rows
        return padded.reshape(-1, panel, rows.shape[1]).transpose(0, 2, 1).copy()


class WinogradFiltersOp(ConstantLayoutOp):
    """OIHW 3 x 3 filters ``w`` transformed for Winograd's ``F(tile, 3)``: ``G w G^T`` per
    output and input channel, as (points, ceil(O / panel), I, panel) with ``points =
    (tile + 2) ** 2``, the last panel zero-filled; the layout ``conv2d_winograd`` reads
    (``dlsys.kernels.conv.winograd``). Made by the constant-packing pass, so it has no
    gradient."""

    name = "WinogradFilters"

    def __call__(self, w: Node, tile: int, panel: int) -> Node:
        return Node(self, [check_node(self.name, "w", w)], {"tile": int(tile),
                                                            "panel": int(panel)})

    def infer_shape(self, node, input_shapes):
        (shape_w,) = input_shapes
        if len(shape_w) != 4 or tuple(shape_w[2:]) != (3, 3):
            raise ShapeError(f"{node.name}: Winograd's filtering takes 3 x 3 OIHW filters, "
                             f"got {tuple(shape_w)}")
        tile, panel = node.attrs["tile"], node.attrs["panel"]
        if tile not in winograd_layouts.TRANSFORMS:
            raise ShapeError(f"{node.name}: no F({tile}, 3); tiles are "
                             f"{sorted(winograd_layouts.TRANSFORMS)}")
        return ((tile + 2) ** 2, -(-shape_w[0] // panel), shape_w[1], panel)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("winograd_filters", (tuple(input_shapes[0]), node.attrs["tile"],
                                               node.attrs["panel"]))

    def reference(self, node, w):
        tile, panel = node.attrs["tile"], node.attrs["panel"]
        _, g, _ = winograd_layouts.transforms(tile)
        points = np.einsum("ar,ocrs,bs->aboc", g, w.astype(np.float64), g)
        channels = w.shape[0]
        padded = np.zeros((*points.shape[:2], -(-channels // panel) * panel, w.shape[1]))
        padded[:, :, :channels] = points
        alpha = tile + 2
        panels = padded.reshape(alpha * alpha, -1, panel, w.shape[1]).transpose(0, 1, 3, 2)
        return panels.astype(w.dtype)


conv2d_op = Conv2dOp()
pack_filters_op = PackFiltersOp()
winograd_filters_op = WinogradFiltersOp()
conv2d_grad_input_op = Conv2dGradInputOp()
conv2d_grad_weight_op = Conv2dGradWeightOp()
