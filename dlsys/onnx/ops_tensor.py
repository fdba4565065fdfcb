"""ONNX's tensor and shape manipulation as dlsys graph nodes, and the shape computations
that fold into constants once the input shapes are known (see ``ops``).

Every converter here takes numpy constants as well as graph nodes: where all its inputs
are constants it computes its result in numpy, so a chain such as Shape -> Gather ->
Concat -> Reshape folds into the reshape's target before any graph exists. A Shape reads
the static dimensions ONNX's shape inference found; where one is unknown until run time
it gives a ``partial_shapes.PartialShape``, which the shape arithmetic carries to a
Reshape's target and any other reader refuses naming the node. Shape and Size, and the
joins, cuts and pads (Concat, Split, Slice, Gather, Pad, Tile, Expand, Trilu) live in
``ops_tensor_parts``, imported at the end of this module.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dlsys.errors import DlsysError
from dlsys.graph import Node
from dlsys.onnx import partial_shapes as partial
from dlsys.onnx.bounds import PERMUTATION, SPLIT
from dlsys.onnx.dtypes import is_narrow_float, narrow_float_type
from dlsys.onnx.ops import Context, Dims, converter, reshape_target, show_dims
from dlsys.onnx.ops_types import integer_cast, narrow_cast
from dlsys.onnx.partial_shapes import PartialShape
from dlsys.ops import logical_not_op
from dlsys.ops.cast import as_float_op
from dlsys.ops.layout import transpose_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reshape import flatten_op, reshape_op

# The numpy types of ONNX's TensorProto element types that a Cast may name.
_ONNX_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
               7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
               13: np.uint64}


# ------------------------------------------------------------------ helpers
def is_constant(value) -> bool:
    """Whether a converter's input value is a number fixed by the file (a numpy array, or a
    numpy scalar that another family's folding produced)."""
    return isinstance(value, (np.ndarray, np.generic))


def folding(*op_types: str, **options):
    """``converter`` for the converters of this family: a numpy scalar they compute (numpy
    gives one for a 0-d result) is passed on as a 0-d array, as converters expect."""
    def register(fn):
        @functools.wraps(fn)
        def convert(ctx, *inputs):
            out = fn(ctx, *inputs)
            if isinstance(out, tuple):
                return tuple(np.asarray(v) if isinstance(v, np.generic) else v for v in out)
            return np.asarray(out) if isinstance(out, np.generic) else out
        converter(*op_types, **options)(convert)
        return fn
    return register


def as_node(ctx: Context, i: int, value) -> Node:
    """Input ``i`` as a graph node: a node as it is, a floating-point constant as a
    parameter that holds it (no optimiser sees it: the module does not list it); an integer
    constant read as a tensor is refused."""
    if isinstance(value, Node):
        return value
    if value is None:
        raise ctx.refuse(f"input {i} is required")
    if isinstance(value, PartialShape):
        raise partial.refuse(ctx, i, value)
    array = np.asarray(value)
    if array.dtype == np.bool_:  # truth values, held as 0 and 1 (a comparison's mask)
        array = array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise ctx.refuse(f"input {i} ({ctx.node.input[i]!r}) is a constant of type "
                         f"{array.dtype} read as a tensor; dlsys computes tensors in floating "
                         f"point and takes integers only as shapes, axes and indices")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    if array.size == 0:
        raise ctx.refuse(f"input {i} ({ctx.node.input[i]!r}) is an empty constant "
                         f"{array.shape}; dlsys tensors hold at least one element")
    name = f"{ctx.node.output[0]}:input{i}"
    return Parameter(array.reshape(1) if array.ndim == 0 else array, name)


def constant_ints(ctx: Context, i: int, value, what: str) -> list[int]:
    """Input ``i``, which must be a constant, as a list of ints."""
    if isinstance(value, PartialShape):
        raise partial.refuse(ctx, i, value, what)
    if not is_constant(value):
        raise ctx.refuse(f"{what} (input {i}, {ctx.node.input[i]!r}) must be a constant (an "
                         f"initializer, a Constant node, or computed from shapes dlsys knows "
                         f"when it builds the graph)")
    if not np.issubdtype(value.dtype, np.integer):
        raise ctx.refuse(f"{what} must be integers, got {value.dtype}")
    return [int(v) for v in value.reshape(-1)]


def axes_of(ctx: Context, axes: list[int], rank: int, what: str = "axes") -> list[int]:
    """``axes`` in ``[0, rank)`` (negative ones count from the end), each named once."""
    wrong = [a for a in axes if not -rank <= a < rank]
    if wrong:
        raise ctx.refuse(f"{what} {axes}: axis {wrong[0]} is out of range for rank {rank}")
    normal = [a % rank for a in axes]
    if len(set(normal)) != len(normal):
        raise ctx.refuse(f"{what} {axes} name an axis more than once")
    return normal


# The shapes dlsys's own shape rules gave the nodes of one walk of the ONNX graph (keyed by
# the walk's ``ctx.shapes``, which every converter of that walk shares), one table per
# stand-in size: only the latest walk's are kept.
_WALK_SHAPES: list = [None, {}]
# Two sizes that stand in for an input's size unknown until run time (the batch): an output
# size that comes out the same for both does not depend on it.
_STAND_INS = (7919, 7927)


def graph_dims(ctx: Context, value) -> Dims | None:
    """The shape of a node built so far, from dlsys's shape rules and the sizes of the
    graph's inputs, where ONNX's shape inference lost track (a Pad whose pads are computed
    from shapes, then a Slice of it); a size that depends on an input's size unknown until
    run time is None. None where the rules do not hold at the stand-in sizes."""
    if not isinstance(value, Node):
        return None
    if _WALK_SHAPES[0] is not ctx.shapes:
        _WALK_SHAPES[:] = [ctx.shapes, {n: {} for n in _STAND_INS}]
    found = [_infer_dims(ctx, value, n, _WALK_SHAPES[1][n]) for n in _STAND_INS]
    if None in found:
        return None
    return tuple(a if a == b else None for a, b in zip(*found))


def _infer_dims(ctx: Context, value: Node, stand_in: int, known: dict):
    stack = [(value, False)]
    while stack:
        node, inputs_done = stack.pop()
        if node in known:
            continue
        if node.op.is_placeholder:
            dims = node.shape if node.op.holds_value else ctx.shapes.get(node.name)
            if dims is None:
                return None
            known[node] = tuple(stand_in if d is None else int(d) for d in dims)
        elif inputs_done:
            try:
                known[node] = tuple(node.op.infer_shape(node, [known[i] for i in node.inputs]))
            except DlsysError:
                return None
        else:
            stack.append((node, True))
            stack.extend((i, False) for i in node.inputs if i not in known)
    return known[value]


def dims_of(ctx: Context, i: int, value) -> Dims:
    """Input ``i``'s dimensions (None for a size unknown until run time); an input whose
    rank ONNX's shape inference does not know is refused."""
    dims = ctx.input_dims(i, value)
    if dims is None or None in dims:
        found = graph_dims(ctx, value)
        if found is not None and (dims is None or len(dims) == len(found)):
            dims = tuple(d if d is not None else f for d, f in zip(dims or found, found))
    if dims is None:
        raise ctx.refuse(f"the rank of input {i} ({ctx.node.input[i]!r}) is unknown; dlsys "
                         f"needs it when it builds the graph")
    return tuple(dims)


def reshaped(ctx: Context, x: Node, dims: Dims, what: str) -> Node:
    """``x`` viewed with ``dims`` (one of them may be unknown: the batch)."""
    return reshape_op(x, reshape_target(ctx, dims, what))


# ------------------------------------------------------------------- shapes
@folding("Flatten", attrs=("axis",), ranked={"axis": SPLIT})
def flatten(ctx, x):
    axis = int(ctx.attr("axis", 1))
    if is_constant(x):
        axis += x.ndim if axis < 0 else 0
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    x = ctx.node_input(0, x)
    if axis == 1:
        return flatten_op(x)
    if axis == 0:
        return reshape_op(x, (1, -1))
    out = ctx.output_dims(0)
    if out is None or sum(d is None for d in out) > 1:
        dims = dims_of(ctx, 0, x)
        axis += len(dims) if axis < 0 else 0
        out = tuple(None if None in part else math.prod(part)
                    for part in (dims[:axis], dims[axis:]))
    return reshape_op(x, reshape_target(ctx, out, "the flattened shape"))


def _numpy_reshape(ctx: Context, x: np.ndarray, spec: list[int]) -> np.ndarray:
    if not ctx.attr("allowzero", 0):
        if any(d == 0 and i >= x.ndim for i, d in enumerate(spec)):
            raise ctx.refuse(f"shape {spec} copies a dimension the input {x.shape} lacks")
        spec = [x.shape[i] if d == 0 else d for i, d in enumerate(spec)]
    try:
        return x.reshape(spec)
    except ValueError:
        raise ctx.refuse(f"cannot reshape a constant of shape {x.shape} to {spec}") from None


@folding("Reshape", attrs=("allowzero",), constant_inputs=(1,))
def reshape(ctx, x, shape):
    if isinstance(shape, PartialShape) and not is_constant(x):
        shape = np.asarray(partial.reshape_spec(ctx, shape), dtype=np.int64)
    if not isinstance(shape, np.ndarray):
        raise ctx.refuse("the target shape must be a constant (an initializer or a Constant "
                         "node); dlsys fixes shapes when it builds the graph")
    spec = [int(d) for d in shape.reshape(-1)]
    if is_constant(x):
        return _numpy_reshape(ctx, x, spec)
    x = ctx.node_input(0, x)
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
                             f"copies the size at its index), but the input {show_dims(dims)} "
                             f"has rank {len(dims)}")
        spec = [dims[i] if d == 0 else d for i, d in enumerate(spec)]
    if None not in spec:
        spec = _batch_free(ctx, dims, spec)
        return flatten_op(x) if spec == [0, -1] else reshape_op(x, tuple(spec))
    return reshape_op(x, reshape_target(ctx, ctx.output_dims(0), "the target shape"))


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


@folding("Transpose", attrs=("perm",), ranked={"perm": PERMUTATION})
def transpose(ctx, x):
    perm = ctx.attr("perm")
    if is_constant(x):
        return np.transpose(x, perm)
    return transpose_op(ctx.node_input(0, x), None if perm is None else tuple(perm))


@folding("Unsqueeze", constant_inputs=(1,))
def unsqueeze(ctx, x, axes):
    if isinstance(x, PartialShape):
        return partial.unsqueeze(ctx, x, constant_ints(ctx, 1, axes, "axes"))
    dims = dims_of(ctx, 0, x)
    rank = len(dims) + len(constant_ints(ctx, 1, axes, "axes"))
    inserted = axes_of(ctx, constant_ints(ctx, 1, axes, "axes"), rank)
    out, rest = [], iter(dims)
    for d in range(rank):
        out.append(1 if d in inserted else next(rest))
    if is_constant(x):
        return x.reshape(out)
    return reshaped(ctx, as_node(ctx, 0, x), tuple(out), "the unsqueezed shape")


@folding("Squeeze", constant_inputs=(1,))
def squeeze(ctx, x, axes=None):
    if isinstance(x, PartialShape):
        return partial.squeeze(ctx, x, None if axes is None else
                               constant_ints(ctx, 1, axes, "axes"))
    dims = dims_of(ctx, 0, x)
    if axes is None:
        if None in dims:
            raise ctx.refuse(f"squeezing every size-1 axis of {show_dims(dims)}, whose sizes "
                             f"are not all known when dlsys builds the graph; name the axes")
        removed = [d for d, n in enumerate(dims) if n == 1]
    else:
        removed = axes_of(ctx, constant_ints(ctx, 1, axes, "axes"), len(dims))
        wrong = [d for d in removed if dims[d] not in (1, None)]
        if wrong:
            raise ctx.refuse(f"axis {wrong[0]} of {show_dims(dims)} has size {dims[wrong[0]]}, "
                             f"not 1")
    out = tuple(n for d, n in enumerate(dims) if d not in removed)
    if is_constant(x):
        return x.reshape(out)
    if not out:  # a scalar: dlsys keeps one axis, as ONNX's 0-d tensors are held
        out = (1,)
    return reshaped(ctx, as_node(ctx, 0, x), out, "the squeezed shape")


@folding("ConstantOfShape", attrs=("value",), constant_inputs=(0,))
def constant_of_shape(ctx, shape):
    value = ctx.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return np.full(constant_ints(ctx, 0, shape, "the shape"), value.reshape(-1)[0],
                   dtype=value.dtype)


@folding("Range", constant_inputs=(0, 1, 2))
def range_(ctx, start, limit, delta):
    for i, value in enumerate((start, limit, delta)):
        if not is_constant(value):
            raise ctx.refuse(f"input {i} ({ctx.node.input[i]!r}) must be a constant; dlsys "
                             f"fixes a range's length when it builds the graph")
    start, limit, delta = (v.reshape(()) for v in (start, limit, delta))
    if delta == 0:
        raise ctx.refuse("delta is 0")
    count = max(int(math.ceil((limit - start) / delta)), 0)
    return (start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)


def _cast(ctx: Context, x, to: np.dtype):
    """``x`` in type ``to``: a constant converted (as numpy does, the ONNX reference's way),
    a node passed on where the cast keeps its meaning in dlsys."""
    if is_constant(x):
        return x.astype(to)
    if isinstance(x, PartialShape):
        if not np.issubdtype(to, np.integer):
            raise partial.refuse(ctx, 0, x)
        return x  # sizes are whole numbers in every integer type
    x = ctx.node_input(0, x)
    if is_narrow_float(to):
        return narrow_cast(ctx, x, to)
    if np.issubdtype(to, np.floating):
        # dlsys computes every floating-point value in the model's one type; an input fed
        # as integers (an attention mask) is converted where it is read so.
        return as_float_op(x) if _fed_directly(x) else x
    if np.issubdtype(to, np.integer):
        # Integer ids fed to the graph stay ids (dlsys keeps the type they are fed in); a
        # float value is truncated.
        return integer_cast(ctx, x)
    if to == np.bool_:
        # dlsys holds truth values as 0 and 1 (a comparison's mask): x != 0.
        return logical_not_op(logical_not_op(x))
    raise ctx.refuse(f"a cast of computed values to {np.dtype(to).name}; dlsys computes "
                     f"tensors in floating point and casts only constants and the ids it is "
                     f"fed to integers (truth values are held as 0 and 1)")


def _fed_directly(x: Node) -> bool:
    """Whether ``x`` is an input fed to the graph, through reshapes at most."""
    while x.op.keeps_dtype and x.inputs and not x.op.is_placeholder:
        x = x.inputs[0]
    return x.op.is_placeholder and not x.op.holds_value


@folding("Cast", attrs=("to", "saturate"))
def cast(ctx, x):
    code = int(ctx.attr("to", 1))
    to = _ONNX_TYPES.get(code) or narrow_float_type(code)
    if to is None:
        raise ctx.refuse(f"a cast to ONNX type {ctx.attr('to')}, which dlsys does not "
                         f"compute in")
    return _cast(ctx, x, np.dtype(to))


@folding("CastLike", attrs=("saturate",))
def cast_like(ctx, x, like):
    to = like.dtype if is_constant(like) else ctx.input_dtype(1) or np.dtype(np.float32)
    if isinstance(like, Parameter) and ctx.input_dtype(1) is None:
        to = np.dtype(like.dtype)
    return _cast(ctx, x, to)


@folding("DepthToSpace", attrs=("blocksize", "mode"))
def depth_to_space(ctx, x):
    b = int(ctx.attr("blocksize"))
    n, c, h, w = _image_dims(ctx, x)
    if b < 1 or c % (b * b):
        raise ctx.refuse(f"blocksize {b}: the {c} channels are not a multiple of {b * b}")
    if ctx.attr("mode", "DCR") == "DCR":
        split, perm = (n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2)
    else:  # CRD
        split, perm = (n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3)
    return _regroup(ctx, x, split, perm, (n, c // (b * b), h * b, w * b))


@folding("SpaceToDepth", attrs=("blocksize", "mode"))
def space_to_depth(ctx, x):
    b = int(ctx.attr("blocksize"))
    n, c, h, w = _image_dims(ctx, x)
    if b < 1 or h % b or w % b:
        raise ctx.refuse(f"blocksize {b} does not divide the image's {h} x {w}")
    # DCR: the block's offsets before the channel in the output's channels; CRD: after.
    perm = (0, 3, 5, 1, 2, 4) if ctx.attr("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    return _regroup(ctx, x, (n, c, h // b, b, w // b, b), perm,
                    (n, c * b * b, h // b, w // b))


def _image_dims(ctx: Context, x) -> Dims:
    dims = dims_of(ctx, 0, x)
    if len(dims) != 4 or None in dims[1:]:
        raise ctx.refuse(f"the input must be (N, C, H, W) with C, H and W known, got "
                         f"{show_dims(dims)}")
    return dims


def _regroup(ctx: Context, x, split: Dims, perm: tuple[int, ...], out: Dims):
    """``x`` viewed as ``split``, its axes moved by ``perm``, and viewed as ``out``."""
    if is_constant(x):
        return np.transpose(x.reshape(split), perm).reshape(out)
    moved = transpose_op(reshaped(ctx, as_node(ctx, 0, x), split, "the blocks' shape"), perm)
    return reshaped(ctx, moved, out, "the output shape")


# The joins, cuts and pads register themselves on import.
from dlsys.onnx import ops_tensor_parts  # noqa: E402,F401
