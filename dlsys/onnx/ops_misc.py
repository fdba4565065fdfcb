"""Converters of ONNX operators outside the other families: cumulative sums and products,
top-k, one-hot, identity matrices, small determinants, windows, SwiGLU, scatters and the
index selections (GatherND, Compress, ReverseSequence).

The positions a scatter writes, the elements a compression keeps and the order a reversal
reads are fixed by integer inputs these converters take as constants (an initializer, a
Constant node, or an input the session folds in per run): the graph then moves elements with
``take`` (a gather of indices fixed when it is built), which has a gradient, so the data and
updates may be tensors computed at run time. Where every input is a constant, the result is
computed in numpy (constant folding).
"""

from __future__ import annotations

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter, show_dims
from dlsys.ops import mul_byconst_op, sigmoid_op
from dlsys.ops.activations import (
    equal_op,
    greater_op,
    less_op,
    logical_or_op,
    where_op,
)
from dlsys.ops.concat import concat_op
from dlsys.ops.cumulative import cumprod_op, cumsum_op, cumulative_reference
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reduce_modes import argmax_op, argmin_op, max_op, min_op
from dlsys.ops.reshape import reshape_op
from dlsys.ops.slicing import slice_op
from dlsys.ops.take import take_op

# How many rounds of arg-max a run-time TopK may take: each is a few kernels over the input.
TOPK_ROUNDS_LIMIT = 64


def _constant(ctx: Context, array, what: str) -> Node:
    """A table the converter computed, as a graph value the model does not train."""
    dtype = getattr(ctx, "compute_dtype", "float32")
    return Parameter(np.ascontiguousarray(array, dtype), f"{ctx.node.output[0]}:{what}")


def _integer(ctx: Context, value, what: str) -> np.ndarray:
    """An integer input the converter needs as a constant, as an int64 array."""
    if not isinstance(value, np.ndarray):
        raise ctx.refuse(f"{what} must be a constant (an initializer, a Constant node or an "
                         f"input fed per run); dlsys fixes it when it builds the graph")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value) & (value == np.round(value))):
        raise ctx.refuse(f"{what} must hold integers, got {value.reshape(-1)[:6]}")
    return value.astype(np.int64)


def _axis(ctx: Context, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ctx.refuse(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank


def _static_dims(ctx: Context, i: int, value, what: str) -> tuple[int, ...]:
    dims = ctx.input_dims(i, value)
    if dims is not None and None in dims:  # the batch the file fixes, if it does
        dims = ctx.fixed_shapes().get(ctx.node.input[i], dims)
    if dims is None or any(d is None for d in dims):
        raise ctx.refuse(f"{what} has shape {show_dims(dims)}; dlsys needs all its sizes "
                         f"when it builds the graph")
    return tuple(dims)


def _as_node(ctx: Context, value, what: str) -> Node:
    return _constant(ctx, value, what) if isinstance(value, np.ndarray) else value


def _gathered(x: Node, flat_indices: np.ndarray, shape: tuple[int, ...]) -> Node:
    """The elements of ``x`` at row-major positions ``flat_indices``, shaped ``shape``."""
    picked = take_op(reshape_op(x, (-1,)), [int(i) for i in flat_indices.reshape(-1)], 0)
    return reshape_op(picked, shape)


# ------------------------------------------------------------ cumulative sums
@converter("CumSum", "CumProd", attrs=("exclusive", "reverse"), constant_inputs=(1,))
def cumsum(ctx, x, axis):
    """Running sums (CumSum) or products (CumProd) along the constant ``axis``."""
    product = ctx.node.op_type == "CumProd"
    exclusive, reverse = bool(ctx.attr("exclusive", 0)), bool(ctx.attr("reverse", 0))
    axis_value = _integer(ctx, axis, "the axis input").reshape(-1)
    if axis_value.size != 1:
        raise ctx.refuse(f"the axis input must be one number, got {axis_value}")
    dims = ctx.input_dims(0, x)
    if dims is None:
        raise ctx.refuse("the input's rank is unknown to ONNX's shape inference")
    rank = len(dims)
    axis = _axis(ctx, int(axis_value[0]), rank)
    if isinstance(x, np.ndarray):
        return cumulative_reference(x, axis, exclusive, reverse, "prod" if product else "sum")
    return (cumprod_op if product else cumsum_op)(x, axis, exclusive, reverse)


# ------------------------------------------------------------ one-hot and identity
@converter("OneHot", attrs=("axis",), constant_inputs=(1, 2))
def one_hot(ctx, indices, depth, values):
    """``values[1]`` where the index (``index + depth`` for a negative one) equals the
    position along the new axis, else ``values[0]``; an index out of [-depth, depth) is a
    row of ``values[0]``."""
    depth = np.asarray(depth).reshape(-1)
    if depth.size != 1 or not depth[0] >= 1 or depth[0] != np.floor(depth[0]):
        raise ctx.refuse(f"depth must be one positive whole number, got {depth}")
    depth = int(depth[0])
    values = np.asarray(values).reshape(-1)
    if values.size != 2:
        raise ctx.refuse(f"values must be (off, on), got {values}")
    dims = ctx.input_dims(0, indices)
    if dims is None:
        raise ctx.refuse("the indices' rank is unknown to ONNX's shape inference")
    axis = _axis(ctx, int(ctx.attr("axis", -1)), len(dims) + 1)
    positions = np.arange(depth).reshape((depth,) + (1,) * (len(dims) - axis))
    if isinstance(indices, np.ndarray):
        index = np.expand_dims(np.trunc(indices).astype(np.int64), axis)
        hot = (index == positions) | (index == positions - depth)
        return np.where(hot, values[1], values[0]).astype(values.dtype)
    index = reshape_op(indices, _expanded_shape(dims, axis))
    hot = logical_or_op(equal_op(index, _constant(ctx, positions, "positions")),
                        equal_op(index, _constant(ctx, positions - depth, "from_end")))
    off, on = float(values[0]), float(values[1])
    return hot if (off, on) == (0.0, 1.0) else mul_byconst_op(hot, on - off) + off


def _expanded_shape(dims, axis: int) -> tuple[int, ...]:
    """``dims`` with a size-1 axis inserted at ``axis`` (the batch, if unknown, as -1)."""
    shape = [-1 if d is None else d for d in dims]
    return tuple(shape[:axis] + [1] + shape[axis:])


@converter("EyeLike", attrs=("dtype", "k"))
def eye_like(ctx, x):
    """Ones on the ``k``-th diagonal of a matrix of ``x``'s shape: a constant of the graph."""
    dims = _static_dims(ctx, 0, x, "the input")
    if len(dims) != 2:
        raise ctx.refuse(f"the input must be a matrix, got shape {show_dims(dims)}")
    from onnx import helper

    dtype_code = ctx.attr("dtype")
    if dtype_code is not None:
        dtype = helper.tensor_dtype_to_np_dtype(int(dtype_code))
    elif isinstance(x, np.ndarray):
        dtype = x.dtype
    else:
        dtype = getattr(ctx, "input_dtype", lambda *_: None)(0, x) or np.float32
    return np.eye(dims[0], dims[1], int(ctx.attr("k", 0)), dtype=dtype)


# ------------------------------------------------------------ top-k
@converter("TopK", attrs=("axis", "largest", "sorted"), constant_inputs=(1,))
def top_k(ctx, x, k):
    """The ``k`` largest (``largest=0``: smallest) values along ``axis`` and their indices,
    in order, ties going to the lower index. At run time: ``k`` rounds, each taking the
    arg-max and masking it out."""
    k_value = _integer(ctx, k, "k").reshape(-1)
    if k_value.size != 1 or k_value[0] < 0:
        raise ctx.refuse(f"k must be one number at least 0, got {k_value}")
    count, largest = int(k_value[0]), bool(ctx.attr("largest", 1))
    if isinstance(x, np.ndarray):
        axis = _axis(ctx, int(ctx.attr("axis", -1)), x.ndim)
        order = np.argsort(-x if largest else x, axis=axis, kind="stable")
        indices = np.take(order, np.arange(count), axis=axis)
        return np.take_along_axis(x, indices, axis), indices.astype(np.int64)
    dims = ctx.input_dims(0, x)
    if dims is None:
        raise ctx.refuse("the input's rank is unknown to ONNX's shape inference")
    axis = _axis(ctx, int(ctx.attr("axis", -1)), len(dims))
    if dims[axis] is None:
        raise ctx.refuse(f"the input has shape {show_dims(dims)}; dlsys needs the size of "
                         f"axis {axis} when it builds the graph")
    if not 1 <= count <= min(dims[axis], TOPK_ROUNDS_LIMIT):
        raise ctx.refuse(f"k={count} along an axis of {dims[axis]}: dlsys takes 1 to "
                         f"{TOPK_ROUNDS_LIMIT} (and at most the axis' size) for a tensor "
                         f"computed at run time")
    extreme, arg = (max_op, argmax_op) if largest else (min_op, argmin_op)
    positions = _constant(ctx, np.arange(dims[axis]).reshape(
        (dims[axis],) + (1,) * (len(dims) - axis - 1)), "positions")
    # Taken elements become -inf (+inf for the smallest), out of every later round's reach.
    spent = _constant(ctx, np.array([-np.inf if largest else np.inf]), "spent")
    values, indices, rest = [], [], x
    for _ in range(count):
        index = arg(rest, axis, keepdims=True)
        values.append(extreme(rest, axis, keepdims=True))
        indices.append(index)
        rest = where_op(equal_op(positions, index), spent, rest)
    if count == 1:
        return values[0], indices[0]
    return concat_op(values, axis), concat_op(indices, axis)


# ------------------------------------------------------------ scatters
_COMBINE = {
    "none": lambda old, new: new,
    "add": lambda old, new: old + new,
    "mul": lambda old, new: old * new,
    "max": lambda old, new: where_op(greater_op(new, old), new, old),
    "min": lambda old, new: where_op(less_op(new, old), new, old),
}
_NUMPY_COMBINE = {"none": lambda old, new: new, "add": np.add, "mul": np.multiply,
                  "max": np.maximum, "min": np.minimum}


def _reduction(ctx: Context) -> str:
    return ctx.choice("reduction", "none", _COMBINE)


def scatter_positions(ctx: Context, data, updates, targets: np.ndarray,
                      data_dims: tuple) -> object:
    """``data`` with element ``targets[j]`` (a row-major position) combined with update
    ``j``, in the order of ``j`` (a position written twice takes both, one after the other).

    At run time each round writes at most one update per position: round r takes the r-th
    update aimed at each position, gathered by a take and selected by a constant mask."""
    reduction = _reduction(ctx)
    targets = targets.reshape(-1)
    if isinstance(data, np.ndarray) and isinstance(updates, np.ndarray):
        out = data.reshape(-1).copy()
        flat_updates = updates.reshape(-1)
        for j, target in enumerate(targets):
            out[target] = _NUMPY_COMBINE[reduction](out[target], flat_updates[j])
        return out.reshape(data.shape)
    size = int(np.prod(data_dims))
    out = reshape_op(_as_node(ctx, data, "data"), (size,))
    flat_updates = reshape_op(_as_node(ctx, updates, "updates"), (-1,))
    seen = np.zeros(size, dtype=np.int64)
    rounds: list[dict[int, int]] = []
    for j, target in enumerate(targets):
        if seen[target] == len(rounds):
            rounds.append({})
        rounds[seen[target]][int(target)] = j
        seen[target] += 1
    for number, round_ in enumerate(rounds):
        source = np.zeros(size, dtype=np.int64)
        chosen = np.zeros(size, dtype=bool)
        source[list(round_)] = list(round_.values())
        chosen[list(round_)] = True
        new = take_op(flat_updates, [int(i) for i in source], 0)
        mask = _constant(ctx, chosen, f"round{number}")
        out = where_op(mask, _COMBINE[reduction](out, new), out)
    return reshape_op(out, data_dims)


def _data_dims(ctx: Context, data) -> tuple[int, ...]:
    return data.shape if isinstance(data, np.ndarray) else _static_dims(ctx, 0, data, "data")


@converter("ScatterElements", "Scatter", attrs=("axis", "reduction"), constant_inputs=(1,))
def scatter_elements(ctx, data, indices, updates):
    """``out[..., indices[i, j, ...], ...] = updates[i, j, ...]`` along ``axis`` (negative
    indices count from the axis' end), combined by ``reduction``."""
    dims = _data_dims(ctx, data)
    indices = _integer(ctx, indices, "indices")
    axis = _axis(ctx, int(ctx.attr("axis", 0)), len(dims))
    if indices.ndim != len(dims) or any(n > d for i, (n, d) in enumerate(
            zip(indices.shape, dims)) if i != axis):
        raise ctx.refuse(f"indices of shape {indices.shape} do not fit data of shape "
                         f"{show_dims(dims)} along axis {axis}")
    if np.any((indices < -dims[axis]) | (indices >= dims[axis])):
        raise ctx.refuse(f"indices must be in [{-dims[axis]}, {dims[axis]}) along axis "
                         f"{axis}, got {indices.min()} to {indices.max()}")
    where = list(np.indices(indices.shape, sparse=False))
    where[axis] = indices % dims[axis]
    targets = np.ravel_multi_index(tuple(where), dims)
    return scatter_positions(ctx, data, updates, targets, dims)


@converter("ScatterND", attrs=("reduction",), constant_inputs=(1,))
def scatter_nd(ctx, data, indices, updates):
    """Slices of ``data`` addressed by the last axis of ``indices`` (a prefix of data's
    index) replaced by, or combined with, the slices of ``updates``."""
    dims = _data_dims(ctx, data)
    indices = _integer(ctx, indices, "indices")
    depth = indices.shape[-1] if indices.ndim else 0
    if indices.ndim < 1 or not 1 <= depth <= len(dims):
        raise ctx.refuse(f"indices of shape {indices.shape} must end in an axis of 1 to "
                         f"{len(dims)} coordinates into data of shape {show_dims(dims)}")
    bounds = np.asarray(dims[:depth])
    if np.any((indices < -bounds) | (indices >= bounds)):
        raise ctx.refuse(f"indices out of range for data of shape {show_dims(dims)}")
    prefixes = np.ravel_multi_index(tuple(np.moveaxis(indices % bounds, -1, 0)), dims[:depth])
    tail = int(np.prod(dims[depth:]))
    targets = prefixes[..., None] * tail + np.arange(tail)
    return scatter_positions(ctx, data, updates, targets, dims)


# ------------------------------------------------------------ selections by constant indices
@converter("Compress", attrs=("axis",), constant_inputs=(1,))
def compress(ctx, x, condition):
    """The slices along ``axis`` (of the flattened input without one) where ``condition``
    is true; the condition is a constant, so the result's shape is known."""
    keep = np.flatnonzero(np.asarray(condition).reshape(-1) != 0)
    if isinstance(x, np.ndarray):
        axis = ctx.attr("axis")
        return np.compress(np.asarray(condition).reshape(-1) != 0, x, axis=axis)
    dims = _static_dims(ctx, 0, x, "the input") if ctx.attr("axis") is None \
        else ctx.input_dims(0, x)
    if ctx.attr("axis") is None:
        if keep.size and keep[-1] >= int(np.prod(dims)):
            raise ctx.refuse(f"a condition of {keep[-1] + 1} elements for an input of "
                             f"{int(np.prod(dims))}")
        return take_op(reshape_op(x, (-1,)), [int(i) for i in keep], 0)
    axis = _axis(ctx, int(ctx.attr("axis")), len(dims))
    if dims[axis] is None or (keep.size and keep[-1] >= dims[axis]):
        raise ctx.refuse(f"the condition reaches past axis {axis} of shape "
                         f"{show_dims(dims)}")
    return take_op(x, [int(i) for i in keep], axis)


@converter("ReverseSequence", attrs=("batch_axis", "time_axis"), constant_inputs=(1,))
def reverse_sequence(ctx, x, sequence_lens):
    """Each batch entry's first ``sequence_lens[b]`` steps along the time axis reversed,
    the rest kept: one gather of positions fixed by the constant lengths."""
    dims = x.shape if isinstance(x, np.ndarray) else _static_dims(ctx, 0, x, "the input")
    batch_axis, time_axis = int(ctx.attr("batch_axis", 1)), int(ctx.attr("time_axis", 0))
    lengths = _integer(ctx, sequence_lens, "sequence_lens").reshape(-1)
    if {batch_axis, time_axis} != {0, 1} or len(dims) < 2:
        raise ctx.refuse(f"batch_axis {batch_axis} and time_axis {time_axis} must be 0 and "
                         f"1 of an input of rank 2 or more, got shape {show_dims(dims)}")
    if lengths.size != dims[batch_axis] or np.any((lengths < 0) | (lengths > dims[time_axis])):
        raise ctx.refuse(f"sequence_lens {lengths} must hold one length in [0, "
                         f"{dims[time_axis]}] per batch entry ({dims[batch_axis]})")
    index = list(np.indices(dims))
    time, batch = index[time_axis], index[batch_axis]
    length = lengths[batch]
    index[time_axis] = np.where(time < length, length - 1 - time, time)
    flat = np.ravel_multi_index(tuple(index), dims)
    if isinstance(x, np.ndarray):
        return x.reshape(-1)[flat]
    return _gathered(x, flat, dims)




# ------------------------------------------------------------ more selections and windows
@converter("GatherND", attrs=("batch_dims",), constant_inputs=(1,))
def gather_nd(ctx, data, indices):
    """Slices of ``data`` addressed by the last axis of ``indices`` (a prefix of data's
    index after the ``batch_dims`` shared leading axes), fixed by constant indices."""
    dims = data.shape if isinstance(data, np.ndarray) else _static_dims(ctx, 0, data, "data")
    indices = _integer(ctx, indices, "indices")
    batch = int(ctx.attr("batch_dims", 0))
    depth = indices.shape[-1] if indices.ndim else 0
    if indices.ndim < 1 or batch < 0 or tuple(indices.shape[:batch]) != tuple(dims[:batch]) \
            or not 1 <= depth <= len(dims) - batch:
        raise ctx.refuse(f"indices of shape {indices.shape} do not address data of shape "
                         f"{show_dims(dims)} after {batch} batch axes")
    bounds = np.asarray(dims[batch:batch + depth])
    if np.any((indices < -bounds) | (indices >= bounds)):
        raise ctx.refuse(f"indices out of range for data of shape {show_dims(dims)}")
    lead = int(np.prod(dims[:batch]))
    per_batch = indices.reshape(lead, -1, depth) % bounds
    # Flat position of each addressed slice's first element, then its elements in order.
    starts = np.ravel_multi_index(tuple(np.moveaxis(per_batch, -1, 0)),
                                  tuple(dims[batch:batch + depth]))
    tail = int(np.prod(dims[batch + depth:]))
    starts = starts * tail + np.arange(lead)[:, None] * int(np.prod(dims[batch:]))
    flat = starts[..., None] + np.arange(tail)
    shape = tuple(indices.shape[:-1]) + tuple(dims[batch + depth:])
    if isinstance(data, np.ndarray):
        return data.reshape(-1)[flat.reshape(-1)].reshape(shape)
    return _gathered(data, flat, shape)


@converter("SwiGLU", attrs=("alpha",))
def swiglu(ctx, gate, value):
    """``gate * sigmoid(alpha * gate) * value``."""
    alpha = float(ctx.attr("alpha", 1.0))
    if isinstance(gate, np.ndarray) and isinstance(value, np.ndarray):
        return (gate / (1 + np.exp(-alpha * gate)) * value).astype(gate.dtype)
    gate, value = _as_node(ctx, gate, "gate"), _as_node(ctx, value, "value")
    scaled = gate if alpha == 1.0 else mul_byconst_op(gate, alpha)
    return gate * sigmoid_op(scaled) * value


# The cosine terms of each window: w[n] = sum_k c_k cos(2 pi k n / D), D the period.
_WINDOWS = {"HannWindow": (0.5, -0.5), "HammingWindow": (25 / 46, -21 / 46),
            "BlackmanWindow": (0.42, -0.5, 0.08)}


@converter(*_WINDOWS, attrs=("periodic", "output_datatype"), constant_inputs=(0,))
def window(ctx, size):
    """A window of ``size`` samples: a constant of the graph. Periodic windows take the
    period ``size``, symmetric ones ``size - 1``."""
    from onnx import helper

    count = _integer(ctx, size, "size").reshape(-1)
    if count.size != 1 or count[0] < 1:
        raise ctx.refuse(f"size must be one positive number, got {count}")
    count = int(count[0])
    period = count if ctx.attr("periodic", 1) else max(count - 1, 1)
    phase = 2 * np.pi * np.arange(count) / period
    values = sum(c * np.cos(k * phase) for k, c in enumerate(_WINDOWS[ctx.node.op_type]))
    dtype = helper.tensor_dtype_to_np_dtype(int(ctx.attr("output_datatype", 1)))
    return np.asarray(values).astype(dtype)


# ------------------------------------------------------------ determinants
# The largest matrices whose determinant is expanded by minors (n! products of n factors).
DET_LARGEST = 4


@converter("Det")
def det(ctx, x):
    """The determinants of the trailing (n, n) matrices, n up to ``DET_LARGEST``: the
    expansion by minors of the first row, built of slices, products and sums (each with
    its gradient), exact where a factorisation would round."""
    if isinstance(x, np.ndarray):
        return np.linalg.det(x).astype(x.dtype)
    dims = ctx.input_dims(0, x)
    if dims is None or len(dims) < 2 or dims[-1] != dims[-2] or dims[-1] is None \
            or not 1 <= dims[-1] <= DET_LARGEST:
        raise ctx.refuse(f"the input has shape {show_dims(dims)}; dlsys takes square "
                         f"matrices of sizes 1 to {DET_LARGEST} known when it builds the graph")
    size = dims[-1]
    rows = [slice_op(x, -2, i, i + 1) for i in range(size)]
    entries = [[slice_op(row, -1, j, j + 1) for j in range(size)] for row in rows]
    value = _expand_by_minors(entries, list(range(size)), list(range(size)))
    lead = [-1 if d is None else d for d in dims[:-2]]
    return reshape_op(value, tuple(lead) or (1,))


def _expand_by_minors(entries, rows: list[int], columns: list[int]) -> Node:
    """The determinant of ``entries`` restricted to ``rows`` and ``columns``."""
    if len(rows) == 1:
        return entries[rows[0]][columns[0]]
    total = None
    for position, column in enumerate(columns):
        term = entries[rows[0]][column] * _expand_by_minors(
            entries, rows[1:], columns[:position] + columns[position + 1:])
        total = term if total is None else (total - term if position % 2 else total + term)
    return total


# ------------------------------------------------------------ discrete Fourier transforms
@converter("DFT", attrs=("axis", "inverse", "onesided"), constant_inputs=(1, 2))
def dft(ctx, x, dft_length=None, axis=None):
    """The DFT (inverse, one-sided) of the signals along ``axis``, real or complex (a last
    axis of 1 or 2): a linear map of the real and imaginary parts, whose four constant
    matrices are numpy's FFT of the unit signals, applied by matrix products."""
    from dlsys.onnx.ops_image import apply_along_axis

    dims = x.shape if isinstance(x, np.ndarray) else ctx.input_dims(0, x)
    if dims is None or len(dims) < 3 or dims[-1] not in (1, 2):
        raise ctx.refuse(f"the input has shape {show_dims(dims)}; it must be (batch, ..., "
                         f"1 or 2)")
    axis = int(np.asarray(axis).reshape(-1)[0]) if axis is not None else \
        int(ctx.attr("axis", 1))
    axis = _axis(ctx, axis, len(dims))
    if axis in (0, len(dims) - 1) or dims[axis] is None:
        raise ctx.refuse(f"axis {axis} must be a signal axis of known size")
    inverse, onesided = bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))
    size = dims[axis]
    length = int(np.asarray(dft_length).reshape(-1)[0]) if dft_length is not None else \
        (2 * (size - 1) if inverse and onesided else size)
    if length < 1:
        raise ctx.refuse(f"dft_length must be positive, got {length}")

    def transform(signal: np.ndarray) -> np.ndarray:  # (size, units) -> complex (out, units)
        if inverse:
            return np.fft.irfft(signal, n=length, axis=0) if onesided else \
                np.fft.ifft(signal, n=length, axis=0)
        full = np.fft.fft(signal, n=length, axis=0)
        return full[:length // 2 + 1] if onesided else full

    unit = np.eye(size)
    from_real, from_imag = transform(unit), transform(1j * unit)
    real_out = not (inverse and onesided)  # irfft's output is real: one component
    if isinstance(x, np.ndarray):
        signal = np.moveaxis(x[..., 0] + (1j * x[..., 1] if dims[-1] == 2 else 0), axis, 0)
        out = np.moveaxis(np.tensordot(from_real, signal.real, 1)
                          + np.tensordot(from_imag, signal.imag, 1), 0, axis)
        parts = [out.real, out.imag] if real_out else [out.real]
        return np.stack(parts, axis=-1).astype(x.dtype)
    components = [slice_op(x, -1, c, c + 1) for c in range(dims[-1])]
    parts = []
    for take_part in ((np.real, np.imag) if real_out else (np.real,)):
        total = None
        for component, matrix in zip(components, (from_real, from_imag)):
            term = apply_along_axis(ctx, component, list(dims[:-1]) + [1], axis,
                                    take_part(matrix))
            total = term if total is None else total + term
        parts.append(total)
    return parts[0] if len(parts) == 1 else concat_op(parts, -1)


__all__ = ["cumsum", "one_hot", "eye_like", "top_k", "scatter_elements", "scatter_nd",
           "compress", "reverse_sequence", "gather_nd", "swiglu", "window", "det", "dft",
           "scatter_positions", "TOPK_ROUNDS_LIMIT"]
