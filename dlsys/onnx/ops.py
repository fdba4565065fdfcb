"""ONNX operators as dlsys graph nodes: one small function per ONNX op type.

Each converter takes the node's context and its input values and returns its output value.
A value is a graph ``Node`` (computed by kernels at run time), a numpy array (a constant the
file fixes: a reshape's target shape, a Constant node's number) or None for an omitted
optional input. ``CONVERTERS`` maps each op type to its function, the attributes it
understands and the inputs it reads as constants; any other attribute, and any value of one
that dlsys cannot compute, is an ``OnnxError`` naming the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.bounds import AXIS, PERMUTATION, SPATIAL, SPATIAL_PAIRS, SPLIT, RankRule
from dlsys.onnx.reader import OnnxError
from dlsys.ops import (
    add_op,
    avgpool2d_op,
    conv2d_op,
    div_op,
    exp_op,
    global_avgpool_op,
    log_op,
    matmul_op,
    maxpool2d_op,
    mul_op,
    relu_op,
    sigmoid_op,
    softmax_op,
    sub_op,
    sum_op,
    tanh_op,
)
from dlsys.ops.layout import transpose_op
from dlsys.ops.norm import batchnorm2d_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reshape import flatten_op, reshape_op, reshape_to_op

Dims = tuple[int | None, ...]


@dataclass
class Context:
    """What a converter knows of its node: attributes, the static dimensions ONNX's shape
    inference found for its inputs and outputs, and whether the model is training."""

    node: object  # onnx.NodeProto
    attrs: dict
    shapes: dict[str, Dims]
    training: bool
    # The shapes with the batch size the file fixes, if it does: for the rare node that
    # needs the batch's size itself (a softmax over the batch axis).
    fixed_shapes: Callable[[], dict[str, Dims]] = dict

    @property
    def where(self) -> str:
        return f"{self.node.op_type} node {self.node.name or self.node.output[0]!r}"

    def refuse(self, text: str) -> OnnxError:
        return OnnxError(f"{self.where}: {text}")

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def input_dims(self, i: int, value=None) -> Dims | None:
        if isinstance(value, (np.ndarray, Parameter)):  # these know their shapes
            return value.shape
        return self.shapes.get(self.node.input[i])

    def output_dims(self, i: int = 0) -> Dims | None:
        return self.shapes.get(self.node.output[i])

    def node_input(self, i: int, value, what: str = "") -> Node:
        """``value`` when it is a graph node; a constant there is refused."""
        if not isinstance(value, Node):
            raise self.refuse(f"input {i} ({self.node.input[i]!r}{what}) must be a tensor "
                              f"computed by the graph or an initializer, got a constant "
                              f"{getattr(value, 'shape', value)}")
        return value

    def only_first_output(self) -> None:
        if any(self.node.output[1:]):
            raise self.refuse(f"only the first output is supported, but the graph reads "
                              f"{[o for o in self.node.output[1:] if o]}")


Converter = Callable[..., object]


@dataclass(frozen=True)
class OpEntry:
    """What the importer knows of an op type: its converter, the attributes it understands,
    the inputs it reads as numbers fixed by the file (a dropout's ratio, a reshape's target
    shape), which an initializer there stays, where any other is a parameter, and the
    attributes whose values depend on the first input's rank (checked before ``fn`` runs)."""

    fn: Converter
    attrs: frozenset[str]
    constant_inputs: frozenset[int] = frozenset()
    ranked: dict[str, RankRule] = field(default_factory=dict)


CONVERTERS: dict[str, OpEntry] = {}


def converter(*op_types: str, attrs: tuple[str, ...] = (),
              constant_inputs: tuple[int, ...] = (), ranked: dict[str, RankRule] | None = None):
    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = OpEntry(fn, frozenset(attrs), frozenset(constant_inputs),
                                          dict(ranked or {}))
        return fn
    return register


def supported_ops() -> list[str]:
    return sorted([*CONVERTERS, "Constant"])


# ----------------------------------------------------------------- elementwise
_BINARY = {"Add": (add_op, np.add), "Sub": (sub_op, np.subtract), "Mul": (mul_op, np.multiply),
           "Div": (div_op, np.divide)}


@converter("Add", "Sub", "Mul", "Div")
def binary(ctx: Context, a, b):
    op, numpy_op = _BINARY[ctx.node.op_type]
    constant_a, constant_b = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    if constant_a and constant_b:
        # Both sides fixed by the file: arithmetic on the file's constants, as ONNX's own
        # constant folding would do, before any graph exists.
        return numpy_op(a, b).astype(np.result_type(a, b))
    if constant_a or constant_b:
        number = _scalar(ctx, a if constant_a else b)
        node = b if constant_a else a
        # Node arithmetic with a number builds dlsys's by-constant operators, each side
        # rounding as the tensor operator would.
        if ctx.node.op_type == "Add":
            return node + number
        if ctx.node.op_type == "Mul":
            return node * number
        if ctx.node.op_type == "Sub":
            return number - node if constant_a else node - number
        return number / node if constant_a else node / number
    return op(a, b)


def _scalar(ctx: Context, array: np.ndarray) -> float:
    if array.size != 1 or array.ndim > 1:
        raise ctx.refuse(f"a constant operand of shape {array.shape}; dlsys takes constant "
                         f"tensors as initializers, and numbers as scalars")
    if not np.issubdtype(array.dtype, np.floating):
        raise ctx.refuse(f"a constant operand of type {array.dtype}; the model computes in "
                         f"float32")
    return float(array.reshape(()))


@converter("Relu")
def relu(ctx, x):
    return relu_op(ctx.node_input(0, x))


@converter("Sigmoid")
def sigmoid(ctx, x):
    return sigmoid_op(ctx.node_input(0, x))


@converter("Tanh")
def tanh(ctx, x):
    return tanh_op(ctx.node_input(0, x))


@converter("Identity")
def identity(ctx, x):
    return x


@converter("Dropout", attrs=("seed",), constant_inputs=(1, 2))
def dropout(ctx, x, ratio=None, training_mode=None):
    # An exported model is an inference graph: its dropout passes the input through.
    ctx.only_first_output()
    if isinstance(training_mode, np.ndarray) and bool(training_mode.reshape(-1)[0]):
        raise ctx.refuse("training_mode is true; dlsys imports dropout as at inference")
    if training_mode is not None and not isinstance(training_mode, np.ndarray):
        raise ctx.refuse("training_mode must be a constant")
    return x


# ------------------------------------------------------------ matrix products
@converter("Gemm", attrs=("alpha", "beta", "transA", "transB"))
def gemm(ctx, a, b, c=None):
    y = matmul_op(ctx.node_input(0, a), ctx.node_input(1, b), bool(ctx.attr("transA", 0)),
                  bool(ctx.attr("transB", 0)))
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is None or beta == 0.0:
        return y
    if isinstance(c, np.ndarray):
        return y + _scalar(ctx, c) * beta
    # A (N,) bias is added as it is, so the fusion pass folds it into the matmul's kernel.
    return y + (c if beta == 1.0 else c * beta)


@converter("MatMul")
def matmul(ctx, a, b):
    a, b = ctx.node_input(0, a), ctx.node_input(1, b)
    dims_a, dims_b = ctx.input_dims(0, a), ctx.input_dims(1, b)
    if dims_a is None or dims_b is None or len(dims_b) != 2 or len(dims_a) < 2:
        raise ctx.refuse(f"dlsys multiplies a matrix or a stack of rows by a matrix; the "
                         f"operands have shapes {_show(dims_a)} and {_show(dims_b)}")
    if len(dims_a) == 2:
        return matmul_op(a, b)
    # Rows stacked over leading axes: one matrix product over all rows, then the leading
    # axes back (both reshapes are views).
    k = dims_a[-1] if dims_a[-1] is not None else dims_b[0]
    out = _reshape_spec(ctx, ctx.output_dims(0), "the product's shape")
    return reshape_op(matmul_op(reshape_op(a, (-1, k)), b), out)


# ---------------------------------------------------------------- convolution
# A window's sizes run over the axes after (N, C) of its input.
_WINDOW_RANKS = {"kernel_shape": SPATIAL, "strides": SPATIAL, "dilations": SPATIAL,
                 "pads": SPATIAL_PAIRS}


def _window(ctx: Context, rank_from: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (stride, padding) pairs of a 2-d window, every unsupported setting refused."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise ctx.refuse(f"auto_pad={auto_pad!r} is not supported; dlsys takes explicit pads "
                         f"(auto_pad NOTSET or VALID)")
    dilations = ctx.attr("dilations")
    if dilations is not None and any(d != 1 for d in dilations):
        raise ctx.refuse(f"dilations={dilations} are not supported (only 1)")
    strides = ctx.attr("strides", [1, 1])
    pads = [0, 0, 0, 0] if auto_pad == "VALID" else ctx.attr("pads", [0, 0, 0, 0])
    if len(strides) != 2 or len(pads) != 4:
        raise ctx.refuse(f"only 2-d windows over NCHW images are supported ({rank_from}: "
                         f"strides {strides}, pads {pads})")
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise ctx.refuse(f"pads={pads} pad the two sides of an axis differently; dlsys pads "
                         f"both sides alike (pads [h, w, h, w])")
    return (int(strides[0]), int(strides[1])), (int(pads[0]), int(pads[1]))


@converter("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
           ranked=_WINDOW_RANKS)
def conv(ctx, x, w, b=None):
    x, w = ctx.node_input(0, x), ctx.node_input(1, w)
    if ctx.attr("group", 1) != 1:
        raise ctx.refuse(f"group={ctx.attr('group')} is not supported (grouped and depthwise "
                         f"convolutions); dlsys convolves with group 1")
    dims_w = ctx.input_dims(1, w)
    if dims_w is not None and len(dims_w) != 4:
        raise ctx.refuse(f"only 2-d convolutions are supported; the weight has shape "
                         f"{_show(dims_w)}")
    kernel = ctx.attr("kernel_shape")
    if kernel is not None and dims_w is not None and tuple(kernel) != tuple(dims_w[2:]):
        raise ctx.refuse(f"kernel_shape {kernel} differs from the weight's {dims_w[2:]}")
    stride, padding = _window(ctx, f"weight {_show(dims_w)}")
    y = conv2d_op(x, w, stride, padding)
    if b is None:
        return y
    return y + reshape_op(ctx.node_input(2, b), (-1, 1, 1))


def _pool_window(ctx: Context):
    kernel = ctx.attr("kernel_shape")
    if kernel is None or len(kernel) != 2:
        raise ctx.refuse(f"only 2-d pooling over NCHW images is supported (kernel_shape "
                         f"{kernel})")
    if ctx.attr("ceil_mode", 0):
        raise ctx.refuse("ceil_mode=1 is not supported; dlsys rounds output sizes down")
    stride, padding = _window(ctx, f"kernel_shape {kernel}")
    return (int(kernel[0]), int(kernel[1])), stride, padding


@converter("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                             "storage_order", "strides"), ranked=_WINDOW_RANKS)
def max_pool(ctx, x):
    ctx.only_first_output()  # the indices output
    return maxpool2d_op(ctx.node_input(0, x), *_pool_window(ctx))


@converter("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                 "kernel_shape", "pads", "strides"), ranked=_WINDOW_RANKS)
def average_pool(ctx, x):
    kernel, stride, padding = _pool_window(ctx)
    if padding != (0, 0) and not ctx.attr("count_include_pad", 0):
        raise ctx.refuse("count_include_pad=0 with padding is not supported; dlsys counts "
                         "the padding in each mean (count_include_pad=1)")
    return avgpool2d_op(ctx.node_input(0, x), kernel, stride, padding)


@converter("GlobalAveragePool")
def global_average_pool(ctx, x):
    dims = ctx.input_dims(0, x)
    if dims is not None and len(dims) != 4:
        raise ctx.refuse(f"only NCHW images are supported, got shape {_show(dims)}")
    return global_avgpool_op(ctx.node_input(0, x))


@converter("BatchNormalization", attrs=("epsilon", "momentum", "training_mode"))
def batch_norm(ctx, x, scale, bias, mean, var):
    ctx.only_first_output()
    if ctx.attr("training_mode", 0):
        raise ctx.refuse("training_mode=1 is not supported; dlsys imports batch norm as at "
                         "inference (call train() on the imported module to train it)")
    x = ctx.node_input(0, x)
    params = [ctx.node_input(i, v) for i, v in enumerate((scale, bias, mean, var), 1)]
    # ONNX blends running statistics as running * momentum + batch * (1 - momentum);
    # dlsys, as PyTorch, weighs the batch by its momentum.
    momentum, eps = 1.0 - float(ctx.attr("momentum", 0.9)), float(ctx.attr("epsilon", 1e-5))
    dims = ctx.input_dims(0, x)
    if dims is not None and len(dims) == 2:
        channels = dims[1] if dims[1] is not None else (ctx.input_dims(1, scale) or [None])[0]
        if channels is None:
            raise ctx.refuse("the number of channels is unknown when the graph is built")
        images = reshape_op(x, (-1, channels, 1, 1))
        y = batchnorm2d_op(images, *params, training=ctx.training, momentum=momentum, eps=eps)
        return reshape_to_op(y, x)
    if dims is None or len(dims) != 4:
        raise ctx.refuse(f"batch norm of (N, C) rows or NCHW images is supported, got shape "
                         f"{_show(dims)}")
    return batchnorm2d_op(x, *params, training=ctx.training, momentum=momentum, eps=eps)


# ------------------------------------------------------------------- shapes
@converter("Flatten", attrs=("axis",), ranked={"axis": SPLIT})
def flatten(ctx, x):
    x = ctx.node_input(0, x)
    axis = int(ctx.attr("axis", 1))
    if axis == 1:
        return flatten_op(x)
    if axis == 0:
        return reshape_op(x, (1, -1))
    return reshape_op(x, _reshape_spec(ctx, ctx.output_dims(0), "the flattened shape"))


@converter("Reshape", attrs=("allowzero",), constant_inputs=(1,))
def reshape(ctx, x, shape):
    x = ctx.node_input(0, x)
    if not isinstance(shape, np.ndarray):
        raise ctx.refuse("the target shape must be a constant (an initializer or a Constant "
                         "node); dlsys fixes shapes when it builds the graph")
    spec = [int(d) for d in shape.reshape(-1)]
    if ctx.attr("allowzero", 0) and 0 in spec:
        raise ctx.refuse("allowzero=1 with a 0 in the shape (an empty tensor) is not supported")
    if spec == [0, -1]:  # PyTorch's x.view(x.size(0), -1)
        return flatten_op(x)
    dims = ctx.input_dims(0, x)
    if 0 in spec:
        if dims is None:
            raise ctx.refuse(f"shape {spec} copies input dimensions whose sizes ONNX's shape "
                             f"inference does not know")
        beyond = [i for i, d in enumerate(spec) if d == 0 and i >= len(dims)]
        if beyond:
            raise ctx.refuse(f"shape {spec} copies the input's dimension(s) {beyond} (a 0 "
                             f"copies the size at its index), but the input {_show(dims)} "
                             f"has rank {len(dims)}")
        spec = [dims[i] if d == 0 else d for i, d in enumerate(spec)]
    if None not in spec:
        spec = _batch_free(ctx, dims, spec)
        return flatten_op(x) if spec == [0, -1] else reshape_op(x, tuple(spec))
    return reshape_op(x, _reshape_spec(ctx, ctx.output_dims(0), "the target shape"))


def _batch_free(ctx: Context, dims: Dims | None, spec: list[int]) -> list[int]:
    """A reshape target whose first entry is the size of a batch that an exporter baked in,
    written so that it takes any batch; any other ``spec`` unchanged.

    PyTorch's default exporter traces ``x.view(x.size(0), -1)`` at the example's batch B and
    writes the number: ``Reshape(x, [B, -1])``, or ``[B, 784]`` for ``x.view(x.size(0),
    784)``. dlsys leaves the batch free (``reader.static_shapes``), so that target would
    fail, or silently fold the batch into the rows, at any other batch. Rewritten only where
    the input's first axis is the batch (unknown with the batch left free) and every other
    axis is known:

    - ``[B, d1, ..., dk]`` with no -1 and ``d1 * ... * dk`` the size of one input row: that
      reshape succeeds only at batch B, so -1 there changes no run that worked and makes
      every other batch a per-row reshape.
    - ``[B, ..., -1, ...]`` where the file fixes its input's batch at B and B reaches this
      input's first axis: the file defines no other batch, and the per-row reading
      (``x.view(x.size(0), -1)``) is the one every exporter's trace of a batched model
      means; the batch is copied (a 0) and the -1 sized for one row. A file whose inputs
      leave the batch free keeps ``[1, -1]`` as written: there it may fold the batch.
    """
    if dims is None or not dims or dims[0] is not None or None in dims[1:] or spec[0] <= 0 \
            or len(spec) < 2:
        return spec
    row = math.prod(dims[1:])
    rest = spec[1:]
    if -1 not in rest:
        return [-1, *rest] if math.prod(rest) == row else spec
    known = math.prod(d for d in rest if d != -1)
    fixed = ctx.fixed_shapes().get(ctx.node.input[0])
    if rest.count(-1) != 1 or not fixed or fixed[0] != spec[0] or known <= 0 or row % known:
        return spec
    return [0, -1] if rest == [-1] else [-1, *(row // known if d == -1 else d for d in rest)]


def _reshape_spec(ctx: Context, dims: Dims | None, what: str) -> tuple[int, ...]:
    """``dims`` as a reshape's target: its one unknown size (the batch) as -1."""
    if dims is None or sum(d is None for d in dims) > 1:
        raise ctx.refuse(f"{what} {_show(dims)} has more than one size unknown until run "
                         f"time; dlsys fixes all but one (the batch) when it builds the graph")
    return tuple(-1 if d is None else d for d in dims)


@converter("Transpose", attrs=("perm",), ranked={"perm": PERMUTATION})
def transpose(ctx, x):
    perm = ctx.attr("perm")
    return transpose_op(ctx.node_input(0, x), None if perm is None else tuple(perm))


@converter("Softmax", "LogSoftmax", attrs=("axis",), ranked={"axis": AXIS})
def softmax(ctx, x):
    x = ctx.node_input(0, x)
    dims = ctx.input_dims(0, x)
    if dims is None:
        raise ctx.refuse("the input's rank is unknown to ONNX's shape inference")
    axis = int(ctx.attr("axis", -1)) % len(dims)  # in [-rank, rank): checked at import
    if ctx.training:
        return _differentiable_log_softmax(ctx, x, axis)
    if len(dims) == 2 and axis == 1:
        y = softmax_op(x)
    else:
        # dlsys's softmax runs over the rows of a matrix: the axis moves last, the rest
        # folds into rows, and both are undone after.
        fixed = ctx.fixed_shapes().get(ctx.node.input[0])
        size = dims[axis] if dims[axis] is not None else fixed and fixed[axis]
        if size is None:
            raise ctx.refuse(f"the softmax axis {axis} of shape {_show(dims)} has a size "
                             f"unknown until run time")
        perm = [d for d in range(len(dims)) if d != axis] + [axis]
        moved = x if axis == len(dims) - 1 else transpose_op(x, tuple(perm))
        y = reshape_to_op(softmax_op(reshape_op(moved, (-1, size))), moved)
        if moved is not x:
            inverse = [perm.index(d) for d in range(len(dims))]
            y = transpose_op(y, tuple(inverse))
    if ctx.node.op_type == "Softmax":
        return y
    # log(softmax): softmax is computed stably (max subtracted), so this is exact to float32
    # rounding until a probability falls below float32's normal range, a logit more than
    # about 87 below its row's largest.
    return log_op(y)


def _differentiable_log_softmax(ctx: Context, x: Node, axis: int) -> Node:
    """Softmax or log-softmax from operators that have gradients (dlsys's softmax kernel has
    none), for fine-tuning: ``x - log(sum(exp(x)))``. Without a row maximum to subtract,
    ``exp`` overflows float32 for logits above about 88; a loss that becomes infinite shows
    it. ``F.cross_entropy`` of log-softmax outputs equals that of the logits, so a model
    ending in LogSoftmax fine-tunes with it unchanged."""
    log_probs = x - log_op(sum_op(exp_op(x), axis, keepdims=True))
    return log_probs if ctx.node.op_type == "LogSoftmax" else exp_op(log_probs)


def _show(dims) -> str:
    if dims is None:
        return "(unknown)"
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


# The converters of the other op families register themselves into ``CONVERTERS`` on import:
# elementwise arithmetic, tensor and shape manipulation, reductions and normalisations.
from dlsys.onnx import ops_math, ops_reduce, ops_tensor  # noqa: E402,F401
