"""ONNX operators as dlsys graph nodes: one small function per ONNX op type.

This module holds what every converter shares (``Context``, the ``converter`` registry, the
helpers that read constants and shapes) and the matrix products; each family of op types
has a module of its own beside it (``ops_math``, ``ops_tensor``, ``ops_reduce``,
``ops_conv``), imported at the end of this one so that ``CONVERTERS`` holds them all.

Each converter takes the node's context and its input values and returns its output value.
A value is a graph ``Node`` (computed by kernels at run time), a numpy array (a constant the
file fixes: a reshape's target shape, a Constant node's number) or None for an omitted
optional input. ``CONVERTERS`` maps each op type to its function, the attributes it
understands and the inputs it reads as constants; any other attribute, and any value of one
that dlsys cannot compute, is an ``OnnxError`` naming the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.bounds import RankRule
from dlsys.onnx.reader import OnnxError
from dlsys.ops import (
    matmul_op,
)
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reshape import reshape_op

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
    # Each value's ONNX element type where the file or ONNX's type inference tells it, and
    # the floating-point type the model computes in: an integer tensor is held as floats
    # exact up to 2**24 (float32) or 2**53 (float64), and ONNX's integer semantics (Div's
    # truncation) are built from float operators.
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    compute_dtype: str = "float32"

    def input_dtype(self, i: int, value=None) -> np.dtype | None:
        """The ONNX element type of input ``i`` (None where unknown)."""
        if isinstance(value, np.ndarray):
            return value.dtype
        return self.dtypes.get(self.node.input[i])

    @property
    def where(self) -> str:
        return f"{self.node.op_type} node {self.node.name or self.node.output[0]!r}"

    def refuse(self, text: str) -> OnnxError:
        return OnnxError(f"{self.where}: {text}")

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def choice(self, name: str, default: str, allowed) -> str:
        """A string attribute (ONNX stores them as bytes), refused unless ``allowed``."""
        value = self.attr(name, default)
        value = value.decode() if isinstance(value, bytes) else str(value)
        if value not in allowed:
            raise self.refuse(f"{name} {value!r} is not one of {', '.join(sorted(allowed))}")
        return value

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


def scalar_operand(ctx: Context, array: np.ndarray) -> float:
    if array.size != 1 or array.ndim > 1:
        raise ctx.refuse(f"a constant operand of shape {array.shape}; dlsys takes constant "
                         f"tensors as initializers, and numbers as scalars")
    if not np.issubdtype(array.dtype, np.floating):
        raise ctx.refuse(f"a constant operand of type {array.dtype}; the model computes in "
                         f"float32")
    return float(array.reshape(()))


@converter("Identity")
def identity(ctx, x):
    return x


@converter("Dropout", attrs=("seed",), constant_inputs=(1, 2))
def dropout(ctx, x, ratio=None, training_mode=None):
    """An exported model is an inference graph: its dropout passes the input through, and
    its mask output (where the graph reads it) keeps every element: all true."""
    # A ratio of zero drops nothing, in training as at inference.
    drops_nothing = isinstance(ratio, np.ndarray) and float(ratio.reshape(-1)[0]) == 0.0
    if isinstance(training_mode, np.ndarray) and bool(training_mode.reshape(-1)[0]) \
            and not drops_nothing:
        raise ctx.refuse("training_mode is true; dlsys imports dropout as at inference")
    if training_mode is not None and not isinstance(training_mode, np.ndarray):
        raise ctx.refuse("training_mode must be a constant")
    if len(ctx.node.output) < 2 or not ctx.node.output[1]:
        return x
    if isinstance(x, np.ndarray):
        return x, np.ones(x.shape, dtype=bool)
    dims = ctx.input_dims(0, x)
    if dims is not None and None not in dims:
        return x, np.ones(dims, dtype=bool)
    # A size known only at run time (the batch): ones computed in the graph, which the
    # session returns as the bool the file declares.
    from dlsys.ops import oneslike_op

    return x, oneslike_op(ctx.node_input(0, x))


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
        return y + scalar_operand(ctx, c) * beta
    # A (N,) bias is added as it is, so the fusion pass folds it into the matmul's kernel.
    return y + (c if beta == 1.0 else c * beta)


@converter("MatMul")
def matmul(ctx, a, b):
    """``numpy.matmul``: matrices, stacks of them whose batch axes broadcast (attention's
    products), and vectors (a 1-d operand gains an axis, which the result drops)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.matmul(a, b)
    a, b = ctx.node_input(0, a), ctx.node_input(1, b)
    dims_a, dims_b = ctx.input_dims(0, a), ctx.input_dims(1, b)
    if dims_a is None or dims_b is None or not dims_a or not dims_b:
        raise ctx.refuse(f"the operands' ranks must be known and at least 1; they have "
                         f"shapes {show_dims(dims_a)} and {show_dims(dims_b)}")
    vector = len(dims_a) == 1 or len(dims_b) == 1
    if len(dims_a) == 1:
        a = reshape_op(a, (1, -1))
    if len(dims_b) == 1:
        b = reshape_op(b, (-1, 1))
    product = matmul_op(a, b)
    if not vector:
        return product
    # A vector times a vector is a number, which dlsys holds as shape (1,).
    target = reshape_target(ctx, ctx.output_dims(0), "the product's shape") or (1,)
    return reshape_op(product, target)


def reshape_target(ctx: Context, dims: Dims | None, what: str) -> tuple[int, ...]:
    """``dims`` as a reshape's target: its one unknown size (the batch) as -1."""
    if dims is None or sum(d is None for d in dims) > 1:
        raise ctx.refuse(f"{what} {show_dims(dims)} has more than one size unknown until run "
                         f"time; dlsys fixes all but one (the batch) when it builds the graph")
    return tuple(-1 if d is None else d for d in dims)


def show_dims(dims) -> str:
    if dims is None:
        return "(unknown)"
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


# The converters of the other op families register themselves into ``CONVERTERS`` on import.
from dlsys.onnx import (  # noqa: E402,F401
    ops_attention,
    ops_conv,
    ops_einsum,
    ops_image,
    ops_loss,
    ops_math,
    ops_misc,
    ops_reduce,
    ops_tensor,
)
