"""ONNX's Shape and Size of a value, and its joins, cuts and pads as dlsys graph nodes
(Concat, Split, Slice, Gather, Pad, Tile, Expand, Trilu), each folded in numpy where all
its inputs are constants (see ``ops_tensor``)."""

from __future__ import annotations

import math

import numpy as np

from dlsys.graph import Node
from dlsys.onnx import partial_shapes as partial
from dlsys.onnx.bounds import AXIS
from dlsys.onnx.ops import Context, show_dims
from dlsys.onnx.ops_tensor import (
    PartialShape,
    as_node,
    axes_of,
    constant_ints,
    dims_of,
    folding,
    is_constant,
    reshaped,
)
from dlsys.ops.concat import concat_op
from dlsys.ops.embedding import embedding_op
from dlsys.ops.layout import transpose_op, trilu_op
from dlsys.ops.pad import pad_op
from dlsys.ops.reshape import reshape_op
from dlsys.ops.slicing import slice_op
from dlsys.ops.take import MAX_RUNS, index_runs, take_op
from dlsys.ops.tile import expand_to_op, tile_op


def _known_shape(ctx: Context, x) -> tuple[int, ...]:
    dims = dims_of(ctx, 0, x)
    if None in dims:
        raise ctx.refuse(f"the shape of input {ctx.node.input[0]!r} is {show_dims(dims)}: "
                         f"shape unknown until run time, and dlsys computes shapes when it "
                         f"builds the graph (an InferenceSession does so for the fed shapes)")
    return tuple(int(d) for d in dims)


@folding("Shape", attrs=("start", "end"))
def shape(ctx, x):
    # Only the sizes are read, never the values: a constant or a node alike. A size the
    # file leaves free is carried as unknown (see ``partial_shapes``); one it fixes (the
    # batch an export fixed, left free by dlsys) is refused, and a session builds the graph
    # at the file's shapes instead.
    if is_constant(x) or isinstance(x, PartialShape):
        dims = x.shape
    else:
        dims = dims_of(ctx, 0, x)
        fixed = ctx.fixed_shapes().get(ctx.node.input[0])
        if fixed is not None and any(d is None and f is not None for d, f in zip(dims, fixed)):
            dims = _known_shape(ctx, x)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return partial.partial_or_constant(dims[start:end] if end is not None else dims[start:])


@folding("Size")
def size(ctx, x):
    dims = x.shape if is_constant(x) else _known_shape(ctx, x)
    return np.asarray(math.prod(dims), dtype=np.int64)


def empty(ctx: Context, dims, axis: int, what: str) -> np.ndarray:
    """An empty result (``dims`` with no entries along ``axis``) as the empty constant it is:
    dlsys tensors hold at least one element, and a Concat leaves it out (a rotary
    embedding's pass-through part, when the rotation covers the whole head)."""
    shape = tuple(0 if d == axis else n for d, n in enumerate(dims))
    if None in shape:
        raise ctx.refuse(f"{what} is empty, {show_dims(shape)}, with a size unknown until "
                         f"run time; dlsys tensors hold at least one element")
    return np.zeros(shape, dtype=np.float32)


def concat(ctx, *inputs):
    axis = int(ctx.attr("axis"))
    if any(isinstance(v, PartialShape) for v in inputs):
        return partial.concat(ctx, inputs, axis)
    if all(is_constant(v) for v in inputs):
        return np.concatenate(inputs, axis=axis)
    # Empty constants add nothing to the join.
    inputs = [v for v in inputs if not (is_constant(v) and v.size == 0)]
    nodes = [as_node(ctx, i, v) for i, v in enumerate(inputs)]
    return nodes[0] if len(nodes) == 1 else concat_op(nodes, axis)


folding("Concat", attrs=("axis",), ranked={"axis": AXIS})(concat)


@folding("Split", attrs=("axis", "num_outputs"), constant_inputs=(1,), ranked={"axis": AXIS})
def split(ctx, x, sizes=None):
    dims = dims_of(ctx, 0, x)
    axis = axes_of(ctx, [int(ctx.attr("axis", 0))], len(dims), "axis")[0]
    parts = len(ctx.node.output)
    if sizes is not None:
        sizes = constant_ints(ctx, 1, sizes, "the split sizes")
        if len(sizes) != parts:
            raise ctx.refuse(f"{len(sizes)} split sizes for {parts} outputs")
    else:
        size = dims[axis]
        if size is None:
            raise ctx.refuse(f"splitting axis {axis} of {show_dims(dims)}, whose size is "
                             f"unknown until run time, into equal parts")
        # Equal parts, the last one smaller where they do not divide (opset 18).
        each = -(-size // parts)
        sizes = [min(each, size - k * each) for k in range(parts)]
    if dims[axis] is not None and sum(sizes) != dims[axis]:
        raise ctx.refuse(f"split sizes {sizes} do not add up to axis {axis} of "
                         f"{show_dims(dims)}")
    bounds = np.cumsum([0, *sizes]).tolist()
    if is_constant(x):
        return tuple(np.split(x, bounds[1:-1], axis=axis))
    if any(n < 0 for n in sizes):
        raise ctx.refuse(f"split sizes {sizes} must not be negative")
    x = as_node(ctx, 0, x)
    return tuple(slice_op(x, axis, bounds[k], bounds[k + 1]) if sizes[k] else
                 empty(ctx, dims, axis, f"part {k} of the split") for k in range(parts))


# ONNX writes "to the end" as the largest int64 (or int32); anything from here counts so.
_TO_THE_END = 2**31 - 1


def _slice_bounds(ctx: Context, size: int | None, start: int, end: int, step: int):
    """ONNX's clamping of one axis's ``start``, ``end`` for ``step`` on an axis of ``size``,
    or None where the slice is the whole axis in order."""
    if step == 0:
        raise ctx.refuse("a step of 0")
    if size is None:
        if step == 1 and start == 0 and end >= _TO_THE_END:
            return None
        raise ctx.refuse("slicing an axis whose size is unknown until run time (other than "
                         "whole)")
    start += size if start < 0 else 0
    end += size if end < 0 else 0
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
    else:
        start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    if (start, end, step) == (0, size, 1):
        return None
    return start, end


@folding("Slice", constant_inputs=(1, 2, 3, 4))
def slice_(ctx, x, starts, ends, axes=None, steps=None):
    starts = constant_ints(ctx, 1, starts, "starts")
    ends = constant_ints(ctx, 2, ends, "ends")
    axes = list(range(len(starts))) if axes is None else constant_ints(ctx, 3, axes, "axes")
    steps = [1] * len(starts) if steps is None else constant_ints(ctx, 4, steps, "steps")
    if isinstance(x, PartialShape):
        return partial.slice_(ctx, x, starts, ends, axes, steps)
    dims = dims_of(ctx, 0, x)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.refuse(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} must "
                         f"have one entry per sliced axis")
    cuts = []
    for axis, start, end, step in zip(axes_of(ctx, axes, len(dims)), starts, ends, steps):
        bounds = _slice_bounds(ctx, dims[axis], start, end, step)
        if bounds is not None:
            cuts.append((axis, *bounds, step))
    if is_constant(x):
        index = [slice(None)] * x.ndim
        for axis, start, end, step in cuts:
            index[axis] = slice(start, None if end < 0 else end, step)
        return x[tuple(index)]
    x = as_node(ctx, 0, x)
    out = list(dims)
    for axis, start, end, step in cuts:
        out[axis] = len(range(start, end, step))
    if 0 in out:
        return empty(ctx, out, out.index(0), "the slice")
    for axis, start, end, step in cuts:
        x = slice_op(x, axis, start, end, step)
    return x


@folding("Gather", attrs=("axis",), ranked={"axis": AXIS})
def gather(ctx, data, indices):
    axis = int(ctx.attr("axis", 0))
    if isinstance(data, PartialShape):
        return partial.take(ctx, data, indices, axis)
    if is_constant(data) and is_constant(indices):
        # np.take gives a numpy scalar for a 0-d index; converters pass arrays on.
        return np.asarray(np.take(data, indices, axis=axis))
    dims = dims_of(ctx, 0, data)
    axis %= len(dims)
    if not is_constant(indices):
        return _gather_ids(ctx, as_node(ctx, 0, data), ctx.node_input(1, indices), dims, axis)
    if not np.issubdtype(indices.dtype, np.integer):
        raise ctx.refuse(f"indices must be integers, got {indices.dtype}")
    flat = [int(i) for i in indices.reshape(-1)]
    size = dims[axis]
    if size is not None:
        wrong = [i for i in flat if not -size <= i < size]
        if wrong:
            raise ctx.refuse(f"index {wrong[0]} is out of range for axis {axis} of "
                             f"{show_dims(dims)}")
        runs = len(index_runs(tuple(i % size for i in flat)))
        if runs > MAX_RUNS:
            raise ctx.refuse(f"the {len(flat)} indices fall into {runs} runs of equal "
                             f"steps; dlsys takes at most {MAX_RUNS}")
    if not flat:
        raise ctx.refuse("no indices; dlsys tensors hold at least one element")
    taken = take_op(as_node(ctx, 0, data), flat, axis)
    if indices.ndim == 1:
        return taken
    out = (*dims[:axis], *indices.shape, *dims[axis + 1:]) or (1,)
    return reshaped(ctx, taken, out, "the gathered shape")


def _gather_ids(ctx: Context, x: Node, ids: Node, dims, axis: int) -> Node:
    """``numpy.take(x, ids, axis)`` for ids fed at run time: the embedding's lookup of rows
    (axis 0 of a matrix), or for another axis or rank the same lookup in a table whose rows
    are ``x``'s slices along ``axis`` (axes moved and folded by views and transposes, so
    the gradient is the embedding's scatter-add, moved back). Ids in ``[-n, n)`` for an
    axis of ``n``: a negative one counts from the end, as ONNX's Gather reads it."""
    if axis == 0 and len(dims) == 2:
        return embedding_op(x, ids, from_end=True)
    ids_dims = dims_of(ctx, 1, ids)
    others = [d for d in range(len(dims)) if d != axis]
    table = reshape_op(transpose_op(x, (axis, *others)), (0, -1))
    rows = reshaped(ctx, embedding_op(table, ids, from_end=True),
                    (*ids_dims, *(dims[d] for d in others)), "the gathered rows' shape")
    k = len(ids_dims)
    perm = (*(k + j for j in range(axis)), *range(k),
            *(k + j for j in range(axis, len(dims) - 1)))
    return transpose_op(rows, perm)


@folding("GatherElements", attrs=("axis",), constant_inputs=(1,), ranked={"axis": AXIS})
def gather_elements(ctx, data, indices):
    """``numpy.take_along_axis(data, indices, axis)`` for indices fixed when the graph is
    built (a fed array of them is folded per value by the session): a take of the flattened
    data at each element's position, so its gradient is the take's scatter-add."""
    axis = int(ctx.attr("axis", 0))
    indices = np.asarray(constant_ints(ctx, 1, indices, "the indices")).reshape(
        np.shape(indices))
    dims = data.shape if is_constant(data) else dims_of(ctx, 0, data)
    axis %= len(dims)
    if None in dims:
        raise ctx.refuse(f"the data's shape {show_dims(dims)} has sizes unknown until run "
                         f"time; dlsys picks fixed elements of a known shape")
    if indices.ndim != len(dims) or any(n > d for n, d in zip(indices.shape, dims)):
        raise ctx.refuse(f"indices of shape {indices.shape} do not fit data {show_dims(dims)}")
    size = dims[axis]
    if np.any((indices < -size) | (indices >= size)):
        raise ctx.refuse(f"an index is out of range for axis {axis} of {show_dims(dims)}")
    along = np.where(indices < 0, indices + size, indices)
    if is_constant(data):
        return np.take_along_axis(data, along, axis)
    # Each element's flat position in data: its own index on every axis but ``axis``.
    grid = list(np.indices(indices.shape))
    grid[axis] = along
    flat = np.ravel_multi_index(tuple(grid), tuple(dims)).reshape(-1)
    runs = len(index_runs(tuple(int(i) for i in flat)))
    if runs > MAX_RUNS:
        raise ctx.refuse(f"the {flat.size} indices fall into {runs} runs of equal steps; "
                         f"dlsys takes at most {MAX_RUNS}")
    rows = reshape_op(as_node(ctx, 0, data), (-1,))
    return reshaped(ctx, take_op(rows, [int(i) for i in flat], 0), indices.shape,
                    "the gathered shape")


@folding("Pad", attrs=("mode",), constant_inputs=(1, 2, 3))
def pad(ctx, x, pads, constant_value=None, axes=None):
    dims = dims_of(ctx, 0, x)
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "edge", "reflect"):
        raise ctx.refuse(f"mode {mode!r}; dlsys pads in the constant, edge and reflect modes")
    axes = list(range(len(dims))) if axes is None else \
        axes_of(ctx, constant_ints(ctx, 3, axes, "axes"), len(dims))
    pads = constant_ints(ctx, 1, pads, "pads")
    if len(pads) != 2 * len(axes):
        raise ctx.refuse(f"{len(pads)} pads for {len(axes)} axes; ONNX gives the starts, "
                         f"then the ends")
    value = 0.0
    if constant_value is not None:
        if not is_constant(constant_value) or constant_value.size != 1:
            raise ctx.refuse("the constant value must be one number fixed by the file")
        value = float(constant_value.reshape(-1)[0])
    pairs = [(0, 0)] * len(dims)
    for k, axis in enumerate(axes):
        pairs[axis] = (pads[k], pads[k + len(axes)])
    # Negative pads cut the input: a slice before the pad.
    cuts = [(axis, -min(b, 0), -min(e, 0)) for axis, (b, e) in enumerate(pairs) if min(b, e) < 0]
    pairs = [(max(b, 0), max(e, 0)) for b, e in pairs]
    if is_constant(x):
        for axis, low, high in cuts:
            x = np.take(x, np.arange(low, x.shape[axis] - high), axis=axis)
        extra = {"constant_values": value} if mode == "constant" else {}
        return np.pad(x, pairs, mode=mode, **extra).astype(x.dtype)
    x = as_node(ctx, 0, x)
    for axis, low, high in cuts:
        if dims[axis] is None or low + high >= dims[axis]:
            raise ctx.refuse(f"negative pads cut axis {axis} of {show_dims(dims)} to "
                             f"nothing, or at a size unknown until run time")
        x = slice_op(x, axis, low, dims[axis] - high)
    if not any(b or e for b, e in pairs):
        return x
    return pad_op(x, pairs, mode, value)


@folding("Tile", constant_inputs=(1,))
def tile(ctx, x, repeats):
    repeats = constant_ints(ctx, 1, repeats, "repeats")
    if is_constant(x):
        return np.tile(x, repeats)
    if any(r < 1 for r in repeats):
        raise ctx.refuse(f"repeats {repeats} must be positive; dlsys tensors hold at least "
                         f"one element")
    x = as_node(ctx, 0, x)
    return x if all(r == 1 for r in repeats) else tile_op(x, repeats)


@folding("Expand", constant_inputs=(1,))
def expand(ctx, x, shape):
    shape = constant_ints(ctx, 1, shape, "the shape")
    if is_constant(x):
        return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))).copy()
    if any(n < 1 for n in shape):
        raise ctx.refuse(f"shape {shape} must be positive; dlsys tensors hold at least one "
                         f"element")
    return expand_to_op(as_node(ctx, 0, x), shape)


@folding("Trilu", attrs=("upper",), constant_inputs=(1,))
def trilu(ctx, x, k=None):
    upper = bool(ctx.attr("upper", 1))
    diagonal = 0 if k is None else constant_ints(ctx, 1, k, "k")[0]
    if is_constant(x):
        return (np.triu if upper else np.tril)(x, diagonal)
    return trilu_op(as_node(ctx, 0, x), upper, diagonal)
