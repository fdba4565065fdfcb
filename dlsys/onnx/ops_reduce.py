"""ONNX's reductions, softmax and normalisations as dlsys graph nodes (see ``ops``).

Every operator here has a gradient in dlsys (an index reduction's is 0), so an imported
model fine-tunes through them. Where all of a node's inputs are constants fixed by the file,
the converter computes its value in numpy instead (constant folding).

Two differences from ONNX's own outputs, both settled where a value leaves the graph: a
reduction over every axis without ``keepdims`` is shaped (1,), not (), since every dlsys
value has an axis; and ArgMax/ArgMin compute their int64 index as a float value, which the
session casts to the output's declared type.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.bounds import AXIS
from dlsys.onnx.ops import Context, converter, show_dims
from dlsys.ops import exp_op, log_op, mean_op, sum_op
from dlsys.ops.activations import greater_equal_op, less_equal_op, where_op
from dlsys.ops.layernorm import layernorm_op
from dlsys.ops.layout import transpose_op
from dlsys.ops.lrn import lrn_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reduce_modes import (
    argmax_op,
    argmin_op,
    hardmax_op,
    l1_norm_op,
    l2_norm_op,
    logsumexp_op,
    max_op,
    min_op,
    prod_op,
    sum_square_op,
)
from dlsys.ops.reshape import reshape_op, reshape_to_op
from dlsys.ops.softmax import logsoftmax_op, softmax_op

# Softmax, LogSoftmax and Hardmax before opset 13 flatten their input into a matrix at
# ``axis`` (default 1) and run along its rows; from 13 on they run along ``axis`` (default
# -1). The first opset of the new meaning:
ALONG_AXIS_OPSET = 13


def opset(ctx: Context) -> int:
    """The default-domain opset of the node's model (13, the oldest dlsys imports, where the
    context does not say)."""
    return int(getattr(ctx, "opset", None) or ALONG_AXIS_OPSET)


def _known_size(ctx: Context, dims, what: str) -> int:
    """The product of ``dims``, all of which must be known when the graph is built."""
    if dims is None or any(d is None for d in dims):
        raise ctx.refuse(f"{what} {show_dims(dims)} has a size unknown until run time")
    return math.prod(dims)


def _size(dims) -> int | None:
    """The product of ``dims``, or None where one is unknown."""
    if dims is None or any(d is None for d in dims):
        return None
    return math.prod(dims)


def _rank(ctx: Context, x) -> int:
    dims = ctx.input_dims(0, x)
    if dims is None:
        raise ctx.refuse("the input's rank is unknown to ONNX's shape inference")
    return len(dims)


def _constant_node(ctx: Context, array: np.ndarray, what: str) -> Node:
    """A constant tensor as a graph value that no optimiser updates (not one of the module's
    parameters): an initializer-like operand the converter adds (a layer norm's unit scale)."""
    return Parameter(np.asarray(array, np.float32), f"{ctx.node.output[0]}:{what}")


# ------------------------------------------------------------ softmax and hardmax
def _along_axis(ctx: Context, x, build) -> Node:
    """``build(x, axis)`` along the node's axis: the opset's meaning (``ALONG_AXIS_OPSET``)."""
    x = ctx.node_input(0, x)
    dims = ctx.input_dims(0, x)
    rank = _rank(ctx, x)
    if opset(ctx) >= ALONG_AXIS_OPSET:
        return build(x, int(ctx.attr("axis", -1)) % rank)
    axis = int(ctx.attr("axis", 1)) % rank
    if axis == rank - 1:  # the matrix's rows are the last axis already
        return build(x, axis)
    columns = _known_size(ctx, dims[axis:], f"the axes from {axis} of shape")
    return reshape_to_op(build(reshape_op(x, (-1, columns)), 1), x)


@converter("Softmax", "LogSoftmax", attrs=("axis",), ranked={"axis": AXIS})
def softmax(ctx, x):
    # dlsys's softmax takes any axis and has its gradient, for inference and fine-tuning.
    op = softmax_op if ctx.node.op_type == "Softmax" else logsoftmax_op
    return _along_axis(ctx, x, lambda value, axis: op(value, axis))


@converter("Hardmax", attrs=("axis",), ranked={"axis": AXIS})
def hardmax(ctx, x):
    return _along_axis(ctx, x, hardmax_op)


# ------------------------------------------------------------ reductions over axes
_REDUCTIONS = {
    "ReduceSum": (sum_op, np.sum), "ReduceMean": (mean_op, np.mean),
    "ReduceMax": (max_op, np.max), "ReduceMin": (min_op, np.min),
    "ReduceProd": (prod_op, np.prod),
    "ReduceL1": (l1_norm_op, lambda x, axis, keepdims: np.abs(x).sum(axis, keepdims=keepdims)),
    "ReduceL2": (l2_norm_op, lambda x, axis, keepdims: np.sqrt(
        (x * x).sum(axis, keepdims=keepdims))),
    "ReduceSumSquare": (sum_square_op, lambda x, axis, keepdims: (x * x).sum(
        axis, keepdims=keepdims)),
    "ReduceLogSumExp": (logsumexp_op, lambda x, axis, keepdims: np.log(np.exp(x).sum(
        axis, keepdims=keepdims))),
    "ReduceLogSum": (lambda x, axes, keepdims: log_op(sum_op(x, axes, keepdims)),
                     lambda x, axis, keepdims: np.log(x.sum(axis, keepdims=keepdims))),
}


def _reduce_axes(ctx: Context, x, axes_input) -> tuple[int, ...] | None:
    """The axes the node reduces, in ``[0, rank)``: the ``axes`` attribute (before opset 18;
    ReduceSum before 13) or constant input (after), None for every axis."""
    if axes_input is not None and not isinstance(axes_input, np.ndarray):
        raise ctx.refuse("the axes input must be a constant (an initializer or a Constant "
                         "node); dlsys fixes a reduction's axes when it builds the graph")
    if axes_input is not None:
        axes = [int(a) for a in np.asarray(axes_input).reshape(-1)]
    else:
        axes = [int(a) for a in ctx.attr("axes", [])]
    if not axes:
        return None
    rank = _rank(ctx, x)
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) < len(axes):
        raise ctx.refuse(f"axes {axes} do not fit the input of rank {rank}: each must be in "
                         f"[{-rank}, {rank - 1}], none twice")
    return tuple(sorted(a % rank for a in axes))


@converter(*_REDUCTIONS, attrs=("axes", "keepdims", "noop_with_empty_axes"),
           constant_inputs=(1,))
def reduce(ctx, x, axes_input=None):
    op, numpy_op = _REDUCTIONS[ctx.node.op_type]
    keepdims = bool(ctx.attr("keepdims", 1))
    axes = _reduce_axes(ctx, x, axes_input)
    if axes is None and ctx.attr("noop_with_empty_axes", 0):
        return x  # no axes given and told to reduce none: the input itself
    if isinstance(x, np.ndarray):
        with np.errstate(divide="ignore"):  # log(0): -inf, as ONNX computes it
            return np.asarray(numpy_op(x, axis=axes, keepdims=keepdims), x.dtype)
    return op(ctx.node_input(0, x), axes, keepdims)


@converter("ArgMax", "ArgMin", attrs=("axis", "keepdims", "select_last_index"),
           ranked={"axis": AXIS})
def arg_extreme(ctx, x):
    axis, keepdims = int(ctx.attr("axis", 0)), bool(ctx.attr("keepdims", 1))
    last = bool(ctx.attr("select_last_index", 0))
    largest = ctx.node.op_type == "ArgMax"
    if isinstance(x, np.ndarray):
        axis %= x.ndim
        values = np.flip(x, axis) if last else x
        index = values.argmax(axis) if largest else values.argmin(axis)
        index = x.shape[axis] - 1 - index if last else index
        return np.expand_dims(index, axis) if keepdims else index
    # The index is a float in the graph (exact up to 2**24); the session casts it to the
    # int64 the output declares.
    return (argmax_op if largest else argmin_op)(ctx.node_input(0, x), axis, keepdims, last)


# ------------------------------------------------------------ variadic elementwise
def _operand(ctx: Context, i: int, value, scalars: bool = True) -> Node | float:
    """Input ``i`` as a node, or where ``scalars`` allows, a one-element constant as a
    number (for the by-constant operators)."""
    if isinstance(value, Node):
        return value
    if scalars and value.size == 1:
        return float(np.asarray(value).reshape(()))
    return _constant_node(ctx, value.reshape(value.shape or (1,)), f"input{i}")


@converter("Sum", "Mean", "Max", "Min")
def variadic(ctx, *values):
    values = values[:len(ctx.node.input)]
    op_type = ctx.node.op_type
    if all(isinstance(v, np.ndarray) for v in values):
        fold = {"Sum": np.add, "Mean": np.add, "Max": np.maximum, "Min": np.minimum}[op_type]
        result = values[0]
        for v in values[1:]:
            result = fold(result, v)
        return result / len(values) if op_type == "Mean" else result
    if op_type in ("Max", "Min"):
        # Selected, not computed (max(a, b) = a + relu(b - a) loses b next to a large a):
        # exact, and the gradient goes to the operand chosen (the first among equals).
        nodes = [_operand(ctx, i, v, scalars=False) for i, v in enumerate(values)]
        keep = greater_equal_op if op_type == "Max" else less_equal_op
        result = nodes[0]
        for other in nodes[1:]:
            result = where_op(keep(result, other), result, other)
        return result
    operands = [_operand(ctx, i, v) for i, v in enumerate(values)]
    # Node operands first, so the running result is a node (a number joins as by-constant).
    result, *rest = sorted(operands, key=lambda v: not isinstance(v, Node))
    for other in rest:
        result = result + other
    return result * (1.0 / len(values)) if op_type == "Mean" else result


# ------------------------------------------------------------ normalisations
def _normalize_rows(ctx: Context, x: Node, columns: int, eps: float) -> Node:
    """``x`` normalised over groups of ``columns`` consecutive elements (its rows once
    reshaped to (-1, columns)), to mean 0 and variance 1: layer norm with unit scale."""
    rows = reshape_op(x, (-1, columns))
    ones = _constant_node(ctx, np.ones(columns), "ones")
    zeros = _constant_node(ctx, np.zeros(columns), "zeros")
    return reshape_to_op(layernorm_op(rows, ones, zeros, eps), x)


def _affine(ctx: Context, y: Node, scale, bias, shape: tuple[int, ...] | None) -> Node:
    """``y * scale + bias``, each reshaped to ``shape`` (None: as it is), which broadcasts
    against ``y``."""
    for i, value in ((1, scale), (2, bias)):
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            value = _constant_node(ctx, value, f"input{i}")
        value = value if shape is None else reshape_op(value, shape)
        y = y * value if i == 1 else y + value
    return y


@converter("LayerNormalization", attrs=("axis", "epsilon", "stash_type"),
           ranked={"axis": AXIS})
def layer_normalization(ctx, x, scale, bias=None):
    x = ctx.node_input(0, x)
    dims = ctx.input_dims(0, x)
    rank = _rank(ctx, x)
    axis = int(ctx.attr("axis", -1)) % rank
    eps = float(ctx.attr("epsilon", 1e-5))
    columns = _known_size(ctx, dims[axis:], f"the normalised axes from {axis} of shape")
    y = _layer_norm(ctx, x, scale, bias, columns, eps)
    if not any(ctx.node.output[1:]):
        return y
    # The statistics outputs, when the graph reads them: the mean and 1 / sqrt(var + eps)
    # over the normalised axes, kept as size 1 (computed apart; training graphs read
    # neither).
    axes = tuple(range(axis, rank))
    mean = mean_op(x, axes, True)
    centered = x - mean
    variance = mean_op(centered * centered, axes, True)
    return y, mean, exp_op(log_op(variance + eps) * -0.5)


def _layer_norm(ctx: Context, x: Node, scale, bias, columns: int, eps: float) -> Node:
    """ONNX's LayerNormalization's Y: ``x`` normalised over its last elements, ``columns`` of
    them, then scaled and shifted."""
    parameters = [v for v in (scale, bias) if v is not None]
    if all(isinstance(v, Node) and _size(ctx.input_dims(i + 1, v)) == columns
           for i, v in enumerate(parameters)):
        # Scale and bias of the normalised shape: one layer-norm kernel over the rows.
        gamma = reshape_op(scale, (columns,))
        beta = (reshape_op(bias, (columns,)) if bias is not None
                else _constant_node(ctx, np.zeros(columns), "zeros"))
        rows = reshape_op(x, (-1, columns))
        return reshape_to_op(layernorm_op(rows, gamma, beta, eps), x)
    # A scale or bias broadcast over the normalised axes: applied after, by broadcasting.
    return _affine(ctx, _normalize_rows(ctx, x, columns, eps), scale, bias, None)


@converter("RMSNormalization", attrs=("axis", "epsilon", "stash_type"), ranked={"axis": AXIS})
def rms_normalization(ctx, x, scale):
    """``x / sqrt(mean(x ** 2) + epsilon) * scale``, the mean over the axes from ``axis`` on
    (opset 23). ``stash_type`` asks for the statistics in float32 or wider: dlsys computes
    them in the model's type, float32 at least."""
    eps = float(ctx.attr("epsilon", 1e-5))
    if isinstance(x, np.ndarray) and isinstance(scale, np.ndarray):  # constants: folded
        axes = tuple(range(int(ctx.attr("axis", -1)) % x.ndim, x.ndim))
        mean_square = (x.astype(np.float32) ** 2).mean(axis=axes, keepdims=True)
        return (x / np.sqrt(mean_square + eps) * scale).astype(np.float32)
    x = ctx.node_input(0, x)
    axis = int(ctx.attr("axis", -1)) % _rank(ctx, x)
    axes = tuple(range(axis, _rank(ctx, x)))
    mean_square = mean_op(x * x, axes, True)
    # 1 / sqrt(m + eps) as exp(-log(m + eps) / 2), as the layer norm's statistics output.
    y = x * exp_op(log_op(mean_square + eps) * -0.5)
    # The scale broadcasts against x from the right (the normalised shape, or fewer axes).
    return _affine(ctx, y, scale, None, None)


@converter("InstanceNormalization", attrs=("epsilon",))
def instance_normalization(ctx, x, scale, bias):
    x = ctx.node_input(0, x)
    dims = ctx.input_dims(0, x)
    if _rank(ctx, x) < 3:
        raise ctx.refuse(f"takes a tensor (N, C, D1, ...), got shape {show_dims(dims)}")
    plane = _known_size(ctx, dims[2:], "the spatial shape")
    channels = _known_size(ctx, dims[1:2], "the channel axis of shape")
    y = _normalize_rows(ctx, x, plane, float(ctx.attr("epsilon", 1e-5)))
    return _affine(ctx, y, scale, bias, (channels,) + (1,) * (len(dims) - 2))


@converter("GroupNormalization", attrs=("epsilon", "num_groups", "stash_type"))
def group_normalization(ctx, x, scale, bias):
    x = ctx.node_input(0, x)
    dims = ctx.input_dims(0, x)
    if _rank(ctx, x) < 3:
        raise ctx.refuse(f"takes a tensor (N, C, D1, ...), got shape {show_dims(dims)}")
    groups = int(ctx.attr("num_groups", 0))
    channels = _known_size(ctx, dims[1:2], "the channel axis of shape")
    plane = _known_size(ctx, dims[2:], "the spatial shape")
    if groups < 1 or channels % groups:
        raise ctx.refuse(f"num_groups={groups} does not divide the {channels} channels")
    y = _normalize_rows(ctx, x, channels // groups * plane, float(ctx.attr("epsilon", 1e-5)))
    scale_size = _known_size(ctx, ctx.input_dims(1, scale), "the scale of shape")
    if scale_size == channels:  # opset 21: a scale and bias per channel
        return _affine(ctx, y, scale, bias, (channels,) + (1,) * (len(dims) - 2))
    if scale_size != groups:
        raise ctx.refuse(f"the scale has {scale_size} elements; it takes one per group "
                         f"({groups}) or per channel ({channels})")
    # Opset 18: one scale and bias per group, over each group's channels and positions.
    grouped = reshape_op(y, (-1, groups, channels // groups * plane))
    return reshape_to_op(_affine(ctx, grouped, scale, bias, (groups, 1)), x)


@converter("MeanVarianceNormalization", attrs=("axes",))
def mean_variance_normalization(ctx, x):
    x = ctx.node_input(0, x)
    dims = ctx.input_dims(0, x)
    rank = _rank(ctx, x)
    axes = _reduce_axes(ctx, x, np.asarray(ctx.attr("axes", [0, 2, 3])))
    moved = [d for d in range(rank) if d not in axes] + list(axes)
    columns = _known_size(ctx, [dims[d] for d in axes], "the normalised axes of shape")
    y = transpose_op(x, tuple(moved)) if moved != list(range(rank)) else x
    # (x - mean) / (std + 1e-9) in ONNX; layer norm's 1 / sqrt(var + eps) with an eps far
    # below float32's resolution of var agrees wherever the variance is not 0, and both
    # give 0 where it is.
    y = _normalize_rows(ctx, y, columns, 1e-18)
    if moved == list(range(rank)):
        return y
    return transpose_op(y, tuple(moved.index(d) for d in range(rank)))


@converter("LpNormalization", attrs=("axis", "p"), ranked={"axis": AXIS})
def lp_normalization(ctx, x):
    x = ctx.node_input(0, x)
    axis = int(ctx.attr("axis", -1)) % _rank(ctx, x)
    p = int(ctx.attr("p", 2))
    if p not in (1, 2):
        raise ctx.refuse(f"p={p}; ONNX's LpNormalization takes p 1 or 2")
    norm = (l1_norm_op if p == 1 else l2_norm_op)(x, (axis,), True)
    return x / norm


@converter("LRN", attrs=("alpha", "beta", "bias", "size"))
def lrn(ctx, x):
    if "size" not in ctx.attrs:
        raise ctx.refuse("the size attribute is required")
    return lrn_op(ctx.node_input(0, x), int(ctx.attr("size")), float(ctx.attr("alpha", 1e-4)),
                  float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0)))
