"""Pooling over NCHW images: max and average over sliding windows, the global average, and
the adjoints of the window pools.

``kernel_size``, ``stride`` (default: the kernel size) and ``padding`` are each an int or an
(h, w) pair, as in PyTorch; max pooling pads with -inf, average pooling with zeros that count
in the mean (PyTorch's ``count_include_pad=True``).

ONNX's options (``POOL_DEFAULTS``): ``padding_end`` pads the end of each axis by its own amount
(and, given, lifts PyTorch's rule that padding is at most half the window, as ONNX does),
``ceil_mode`` keeps a last partial window, ``dilation`` spreads the window, and
average pooling's ``count_include_pad=False`` divides by the image elements of each window
only. The kernels are given the start padding and the output's shape; an average's divisor
is the part of each window inside its ``counted`` span of each axis.
"""

from __future__ import annotations

import numpy as np

from dlsys.errors import ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.conv import (
    describe_window,
    scatter_windows,
    window_attrs,
    window_size,
    windows,
)
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


# The options beyond PyTorch's pools, and their values when not given.
POOL_DEFAULTS = {"padding_end": None, "ceil_mode": False, "dilation": (1, 1),
                 "count_include_pad": True}


def pool_options(where: str, padding: Pair, padding_end=None, ceil_mode: bool = False,
                 dilation=1, count_include_pad: bool = True) -> dict:
    """The checked ONNX options of a window pool (see the module's docstring)."""
    try:
        # None (not given) marks a pool with PyTorch's rules: padding at most half the window.
        end = None if padding_end is None else window_pair("padding_end", padding_end, 0)
        return {"padding_end": end, "ceil_mode": bool(ceil_mode),
                "dilation": window_pair("dilation", dilation, 1),
                "count_include_pad": bool(count_include_pad)}
    except ShapeError as err:
        raise ShapeError(f"{where}: {err}") from None


def pool_output_shape(shape_x, kernel: Pair, stride: Pair, padding: Pair, padding_end: Pair,
                      ceil_mode: bool, dilation: Pair) -> tuple:
    """(N, C, H', W') of a pool with ONNX's options (``conv.window_size`` per axis)."""
    if len(shape_x) != 4:
        raise ShapeError(f"images must be 4-d (N, C, H, W), got shape {tuple(shape_x)}")
    size = tuple(window_size(shape_x[2 + a], kernel[a], stride[a], padding[a], padding_end[a],
                             dilation[a], ceil_mode) for a in range(2))
    if min(size) < 1:
        raise ShapeError(f"pooling window {tuple(kernel)} dilated by {tuple(dilation)} is "
                         f"larger than the image {tuple(shape_x[2:])} padded by "
                         f"{tuple(padding)} and {tuple(padding_end)}")
    return (shape_x[0], shape_x[1], *size)


def _reach(size: int, out: int, kernel: int, stride: int, begin: int, dilation: int) -> int:
    """The end padding that ``out`` windows need over ``size`` elements (ceil mode's last
    window may reach past the declared padding)."""
    return max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size - begin)


class _PoolFamilyOp(Op):
    """Shared by the window pools and their adjoints: ``kernel``, ``stride``, ``padding``
    and the ``POOL_DEFAULTS`` options."""

    kind = ""
    averages = False  # whether the kernel divides by each window's count

    def describe(self, node):
        return describe_window(node, {"kernel": None, "stride": node.attrs["kernel"],
                                      "padding": (0, 0), "ceil_mode": False,
                                      "dilation": (1, 1), "count_include_pad": True,
                                      "padding_end": None})

    def _window(self, node) -> tuple[Pair, Pair, Pair]:
        return node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]

    def _options(self, node) -> dict:
        return {k: node.attrs[k] for k in POOL_DEFAULTS}

    def _end(self, node) -> Pair:
        """The padding of each axis's end."""
        end = node.attrs["padding_end"]
        return node.attrs["padding"] if end is None else end

    def _plain(self, node) -> bool:
        """Whether only PyTorch's options are used (the plain kernels and shape rule)."""
        a = node.attrs
        return not a["ceil_mode"] and a["dilation"] == (1, 1) and a["count_include_pad"] \
            and a["padding_end"] is None

    def _forward_shape(self, node, shape_x):
        if self._plain(node):
            return pool2d_shape(shape_x, *self._window(node))
        a = node.attrs
        return pool_output_shape(shape_x, *self._window(node), self._end(node), a["ceil_mode"],
                                 a["dilation"])

    def _shape_x(self, input_shapes) -> tuple:
        """The pooled images' shape among the inputs' shapes."""
        return tuple(input_shapes[0])

    def kernel_spec(self, node, input_shapes, output_shape):
        shapes = [tuple(s) for s in input_shapes[:len(self.kernel_inputs(node))]]
        kind, extra = self.kind, ()
        if node.attrs["dilation"] != (1, 1):
            kind, extra = f"dilated_{self.kind}", (node.attrs["dilation"],)
            if self.averages:
                extra += (self._counted(node, self._shape_x(input_shapes)),)
        elif self.averages and not self._plain(node):
            # Only the divisors differ: a max pool needs the start padding and the output's
            # shape alone, which the plain kernel takes.
            kind, extra = f"{self.kind}_counted", (self._counted(node,
                                                                     self._shape_x(input_shapes)),)
        return KernelSpec(kind, (*shapes, tuple(output_shape), *self._window(node), *extra))

    def _counted(self, node, shape_x) -> tuple[Pair, Pair]:
        """Per axis, the span ``[lo, hi)`` of positions an average counts: the padded image
        (as declared, not ceil mode's extra reach) or the image alone."""
        a, size = node.attrs, shape_x[2:]
        if a["count_include_pad"]:
            return tuple((-a["padding"][i], size[i] + self._end(node)[i]) for i in range(2))
        return tuple((0, size[i]) for i in range(2))

    def _reference_windows(self, node, x, out_shape, value):
        """Every window of ``x`` (numpy), ``out_shape[2:]`` of them per axis."""
        kernel, stride, padding = self._window(node)
        dilation = node.attrs["dilation"]
        end = tuple(max(self._end(node)[i], _reach(x.shape[2 + i], out_shape[2 + i],
                                                              kernel[i], stride[i], padding[i],
                                                              dilation[i])) for i in range(2))
        view = windows(x, kernel, stride, padding, value, padding_end=end, dilation=dilation)
        return view[:, :, :out_shape[2], :out_shape[3]]

    def _divisor(self, node, shape_x, out_shape) -> np.ndarray:
        """Each window's divisor (H', W'): its positions inside the counted spans."""
        kernel, stride, padding = self._window(node)
        counts = []
        for a, (lo, hi) in enumerate(self._counted(node, shape_x)):
            start = np.arange(out_shape[2 + a]) * stride[a] - padding[a]
            taps = start[:, None] + np.arange(kernel[a]) * node.attrs["dilation"][a]
            counts.append(np.clip(((taps >= lo) & (taps < hi)).sum(axis=1), 1, None))
        return np.outer(*counts)


class _PoolOp(_PoolFamilyOp):
    """``pool(x)`` over every window."""

    splits_rows = (0,)  # each image alone

    def __call__(self, x: Node, kernel_size, stride=None, padding=0, **options) -> Node:
        """``options``: ONNX's ``POOL_DEFAULTS`` (``padding_end``, ``ceil_mode``...)."""
        where = f"{self.name}({short_name(x)})"
        attrs = pool_attrs(where, kernel_size, stride, padding)
        return Node(self, [check_node(self.name, "x", x)],
                    {**attrs, **pool_options(where, attrs["padding"], **options)})

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._forward_shape, node, input_shapes[0])


class _PoolGradOp(_PoolFamilyOp):
    """A window pool's adjoint: gradient ``g`` of its output back to its input ``x``'s shape."""

    def __call__(self, a: Node, b: Node, kernel, stride, padding, **options) -> Node:
        inputs = [check_node(self.name, "input 0", a), check_node(self.name, "input 1", b)]
        attrs = pool_attrs(self.name, kernel, stride, padding)
        return Node(self, inputs, {**attrs, **pool_options(self.name, attrs["padding"],
                                                           **options)})

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
        return [maxpool2d_grad_op(node.inputs[0], output_grad, *self._window(node),
                                  **self._options(node))]

    def reference(self, node, x):
        out = self._forward_shape(node, x.shape)
        return self._reference_windows(node, x, out, -np.inf).max(axis=(-2, -1))


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
        return KernelSpec(f"{spec.kind}_epilogue", (*spec.params, tuple(epilogue)))

    def reference(self, node, x, g):
        kernel, stride, padding = self._window(node)
        flat = self._reference_windows(node, x, g.shape, -np.inf)
        flat = flat.reshape(*flat.shape[:4], -1)
        first = np.argmax(flat, axis=-1)  # numpy's argmax is the first maximum
        chosen = np.arange(flat.shape[-1]) == first[..., None]
        per_window = (chosen * g[..., None]).reshape(*g.shape, *kernel)
        return scatter_windows(per_window, x.shape, stride, padding, node.attrs["dilation"])


class AvgPool2dOp(_PoolOp):
    """The mean of each window, padding counted as zeros."""

    name = "AvgPool2d"
    kind = "avg_pool2d"
    averages = True

    def gradient(self, node, output_grad):
        return [avgpool2d_grad_op(output_grad, node.inputs[0], *self._window(node),
                                  **self._options(node))]

    def reference(self, node, x):
        out = self._forward_shape(node, x.shape)
        sums = self._reference_windows(node, x, out, 0.0).sum(axis=(-2, -1))
        return sums / self._divisor(node, x.shape, out)


class AvgPool2dGradOp(_PoolGradOp):
    """``dx`` of average pooling, from ``(g, x)``; ``x`` lends its shape only. Linear in
    ``g``, its gradient is the average pooling again."""

    name = "AvgPool2dGrad"
    kind = "avg_pool2d_grad"
    averages = True

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def _x_and_g(self, shapes):
        return shapes[1], shapes[0]

    def _shape_x(self, input_shapes):
        return tuple(input_shapes[1])

    def gradient(self, node, output_grad):
        # The pool is (divisors)^-1 (window sums): its adjoint's adjoint is itself.
        return [avgpool2d_op(output_grad, *self._window(node), **self._options(node)), None]

    def reference(self, node, g, x):
        kernel, stride, padding = self._window(node)
        scaled = g / self._divisor(node, x.shape, g.shape)
        per_window = np.broadcast_to(scaled[..., None, None], (*g.shape, *kernel))
        return scatter_windows(per_window, x.shape, stride, padding, node.attrs["dilation"])


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
