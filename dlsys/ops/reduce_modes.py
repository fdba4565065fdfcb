"""Reductions over axes beyond the sum and the mean (``reduce.py``): the L1 and L2 norms,
the sum of squares, max, min, product and log-sum-exp, each with its adjoint; and the
index reductions (arg max and min, hardmax) of ONNX, which have no gradient.

Each reduction takes ``axes`` and ``keepdims`` as ``sum_op`` does (a result with no axes
left is ``(1,)``). An arg max or min is an integer index computed as a float value: a model
that declares it int64 gets it cast where the value leaves the graph.
"""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_flag
from dlsys.errors import GradientError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.reduce import ReduceAxesOp, _axes_attrs
from dlsys.ops.shapes import apply_rule, normalize_axes, reduce_shape, reduce_source
from dlsys.ops.softmax import _check_axis, _normalized_axis

# Modes whose kernel is the sum's with a term and a finish (``kernels.reduce.modes``).
SUM_MODES = ("l1", "l2", "sum_square")
# Modes where a reduction over size-1 axes only is its input (the others change each term).
IDENTITY_ON_ONE = ("max", "min", "prod", "log_sum_exp")


def _mode_reference(x: np.ndarray, mode: str, axes: tuple, keepdims: bool) -> np.ndarray:
    if mode == "l1":
        return np.abs(x).sum(axis=axes, keepdims=keepdims)
    if mode == "sum_square":
        return (x * x).sum(axis=axes, keepdims=keepdims)
    if mode == "l2":
        return np.sqrt((x * x).sum(axis=axes, keepdims=keepdims))
    if mode == "max":
        return x.max(axis=axes, keepdims=keepdims)
    if mode == "min":
        return x.min(axis=axes, keepdims=keepdims)
    if mode == "prod":
        return x.prod(axis=axes, keepdims=keepdims)
    top = x.max(axis=axes, keepdims=True)
    with np.errstate(invalid="ignore"):
        out = np.log(np.exp(x - top).sum(axis=axes, keepdims=True)) + top
    out = np.where(np.isneginf(top), top, out)
    return out if keepdims else np.squeeze(out, axis=axes)


class ReduceModeOp(ReduceAxesOp):
    """``mode`` of ``x`` over ``axes``: ``l1`` (sum of ``|x|``), ``l2`` (square root of the
    sum of squares), ``sum_square``, ``max``, ``min``, ``prod`` or ``log_sum_exp`` (stable:
    the max is subtracted first)."""

    def __init__(self, name: str, mode: str):
        super().__init__(name, mean=False)
        self.mode = mode

    def is_alias(self, node, input_shapes):
        return self.mode in IDENTITY_ON_ONE and super().is_alias(node, input_shapes)

    def gradient(self, node, output_grad):
        x, axes, keepdims = node.inputs[0], node.attrs["axes"], node.attrs["keepdims"]
        if self.mode in ("max", "min"):
            # Tied extremes share the gradient evenly, as PyTorch's amax and amin do.
            output_grad = output_grad / extreme_count_op(x, node, axes, keepdims)
        return [reduce_mode_gradient_op(output_grad, x, node, self.mode, axes, keepdims)]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        source = reduce_source(shape, node.attrs["axes"], node.attrs["keepdims"])
        kind = "reduce_norm" if self.mode in SUM_MODES else "reduce_extreme"
        return KernelSpec(kind, (shape, source, self.mode))

    def reference(self, node, x):
        axes = normalize_axes(x.shape, node.attrs["axes"])
        out = _mode_reference(x, self.mode, axes, node.attrs["keepdims"])
        return np.reshape(out, reduce_shape(x.shape, axes, node.attrs["keepdims"]))


class ReduceModeGradientOp(Op):
    """The adjoint of a ``ReduceModeOp`` of ``mode`` at its input ``x`` and output ``y`` for
    the upstream gradient ``g`` (see ``kernels.reduce.modes.reduce_mode_gradient``; a max or min
    gives ``g`` to each element equal to ``y``, its operator having divided ``g`` by their
    count)."""

    name = "ReduceModeGrad"

    def __call__(self, g: Node, x: Node, y: Node, mode: str, axes, keepdims: bool) -> Node:
        attrs = _axes_attrs(self.name, x, axes, keepdims)
        return Node(self, [g, x, y], {**attrs, "mode": mode})

    def describe(self, node):
        return f"ReduceGrad[{node.attrs['mode']}]({short_name(node.inputs[0])})"

    def _rule(self, node, g_shape, x_shape, y_shape):
        reduced = reduce_shape(x_shape, node.attrs["axes"], node.attrs["keepdims"])
        if tuple(g_shape) != reduced or tuple(y_shape) != reduced:
            raise GradientError(f"{node.name}: g and y must have the reduced shape {reduced}")
        return tuple(x_shape)

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._rule, node, *input_shapes)

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: reductions have no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(output_shape)
        source = reduce_source(shape, node.attrs["axes"], node.attrs["keepdims"])
        return KernelSpec("reduce_mode_gradient", (shape, source, node.attrs["mode"]))

    def reference(self, node, g, x, y):
        source = reduce_source(x.shape, node.attrs["axes"], node.attrs["keepdims"])
        kept = [d for d in source if d is not None]
        # g and y with a size-1 axis for each reduced one, then broadcast against x.
        spread = [x.shape[d] if d in kept else 1 for d in range(x.ndim)]
        g, y = np.reshape(g, spread), np.reshape(y, spread)
        mode = node.attrs["mode"]
        with np.errstate(divide="ignore", invalid="ignore"):
            if mode == "l1":
                return g * np.sign(x)
            if mode == "sum_square":
                return 2 * g * x
            if mode == "l2":
                return np.where(y == 0, 0.0, g * x / y)
            if mode in ("max", "min"):
                return np.where(x == y, g, 0.0)
            if mode == "prod":
                return g * y / x
            return g * np.exp(x - y)


class ExtremeCountOp(Op):
    """How many elements of each slice of ``x`` over ``axes`` equal ``y``, its max or min
    (shaped as ``y``): the ties that share a max's gradient."""

    name = "ExtremeCount"

    def __call__(self, x: Node, y: Node, axes, keepdims: bool) -> Node:
        return Node(self, [x, y], _axes_attrs(self.name, x, axes, keepdims))

    def infer_shape(self, node, input_shapes):
        reduced = reduce_shape(input_shapes[0], node.attrs["axes"], node.attrs["keepdims"])
        if tuple(input_shapes[1]) != reduced:
            raise GradientError(f"{node.name}: y must have the reduced shape {reduced}")
        return reduced

    def gradient(self, node, output_grad):
        return [None, None]  # a count of ties: piecewise constant

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        return KernelSpec("extreme_count", (shape, reduce_source(
            shape, node.attrs["axes"], node.attrs["keepdims"])))

    def reference(self, node, x, y):
        axes = normalize_axes(x.shape, node.attrs["axes"])
        spread = [1 if d in axes else n for d, n in enumerate(x.shape)]
        count = (x == np.reshape(y, spread)).sum(axis=axes, keepdims=node.attrs["keepdims"])
        return np.reshape(count, reduce_shape(x.shape, axes, node.attrs["keepdims"])
                          ).astype(np.float64)


class ArgExtremeOp(Op):
    """The index along ``axis`` of the largest (``largest``) or smallest element of ``x``,
    the last among ties where ``last``, as a float; ``axis`` kept as size 1 under
    ``keepdims`` (ONNX's default). An index is piecewise constant: its gradient is 0."""

    def __init__(self, name: str, largest: bool):
        self.name = name
        self.largest = largest

    def __call__(self, x: Node, axis: int = 0, keepdims: bool = True,
                 last: bool = False) -> Node:
        x = check_node(self.name, "x", x)
        where = f"{self.name}({x.name})"
        return Node(self, [x], {"axis": _check_axis(where, axis),
                                "keepdims": check_flag(f"{where}: keepdims", keepdims),
                                "last": check_flag(f"{where}: last", last)})

    def describe(self, node):
        return f"{self.name}({short_name(node.inputs[0])}, {node.attrs['axis']})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        return reduce_shape(shape, (_normalized_axis(node, shape),), node.attrs["keepdims"])

    def gradient(self, node, output_grad):
        return [None]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        return KernelSpec("arg_extreme", (shape, _normalized_axis(node, shape),
                                          node.attrs["keepdims"], self.largest,
                                          node.attrs["last"]))

    def reference(self, node, x):
        axis = node.attrs["axis"] % x.ndim
        if node.attrs["last"]:  # the first of the reversed axis, counted from the end
            flipped = np.flip(x, axis)
            index = x.shape[axis] - 1 - (flipped.argmax(axis) if self.largest
                                         else flipped.argmin(axis))
        else:
            index = x.argmax(axis) if self.largest else x.argmin(axis)
        index = index.astype(np.float64)
        shape = reduce_shape(x.shape, (axis,), node.attrs["keepdims"])
        return np.reshape(index, shape)


class HardmaxOp(Op):
    """1 at the first largest element of each slice of ``x`` along ``axis``, 0 elsewhere
    (ONNX's Hardmax); piecewise constant, so its gradient is 0."""

    name = "Hardmax"

    def __call__(self, x: Node, axis: int = -1) -> Node:
        x = check_node(self.name, "x", x)
        return Node(self, [x], {"axis": _check_axis(f"{self.name}({x.name})", axis)})

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        _normalized_axis(node, shape)
        return shape

    def gradient(self, node, output_grad):
        return [None]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(output_shape)
        return KernelSpec("hardmax", (shape, _normalized_axis(node, shape)))

    def reference(self, node, x):
        axis = node.attrs["axis"] % x.ndim
        index = np.expand_dims(x.argmax(axis), axis)
        return (np.arange(x.shape[axis]).reshape(
            [-1 if d == axis else 1 for d in range(x.ndim)]) == index).astype(np.float64)


l1_norm_op = ReduceModeOp("ReduceL1", "l1")
l2_norm_op = ReduceModeOp("ReduceL2", "l2")
sum_square_op = ReduceModeOp("ReduceSumSquare", "sum_square")
max_op = ReduceModeOp("ReduceMax", "max")
min_op = ReduceModeOp("ReduceMin", "min")
prod_op = ReduceModeOp("ReduceProd", "prod")
logsumexp_op = ReduceModeOp("ReduceLogSumExp", "log_sum_exp")
reduce_mode_gradient_op = ReduceModeGradientOp()
extreme_count_op = ExtremeCountOp()
argmax_op = ArgExtremeOp("ArgMax", largest=True)
argmin_op = ArgExtremeOp("ArgMin", largest=False)
hardmax_op = HardmaxOp()

__all__ = ["ReduceModeOp", "ReduceModeGradientOp", "ExtremeCountOp", "ArgExtremeOp", "HardmaxOp",
           "l1_norm_op", "l2_norm_op", "sum_square_op", "max_op", "min_op", "prod_op",
           "logsumexp_op", "reduce_mode_gradient_op", "extreme_count_op", "argmax_op",
           "argmin_op", "hardmax_op"]
