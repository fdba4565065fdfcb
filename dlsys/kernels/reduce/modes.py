"""Reductions other than the plain sum, and their adjoints.

- ``reduce_norm``: a sum of a function of each term (``l1``: ``|x|``, ``sum_square``:
  ``x * x``, ``l2``: the square root of that sum), built on the sum's own compute
  (``compute.reduce_sum``) and schedule, so it is as accurate and as fast;
- ``reduce_extreme``: ``max``, ``min``, ``prod`` and ``log_sum_exp`` (the max subtracted
  before ``exp``, so no term overflows), plain blocks run with ``schedule_each_block``;
- ``reduce_mode_gradient``: each mode's adjoint, elementwise over the input, reading the
  upstream gradient and the forward output where the reduction wrote them;
- ``arg_extreme``: the position of the largest (smallest) element along one axis, first or
  last among ties, written as a float; ``hardmax``: 1 at that first position, 0 elsewhere.

``source`` maps each output axis to the input axis it indexes, or None for a kept size-1
axis, as in ``compute.reduce_sum`` (``dlsys.ops.shapes.reduce_source``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tvm
from tvm import te, tirx

from dlsys.kernels.common.compute import ACCUMULATOR, Shape
from dlsys.kernels.reduce.compute import _input_index, reduce_sum

# The term each sum-like mode adds up, and what it does to the total.
SUM_TERMS = {
    "l1": lambda x: tirx.abs(x),
    "sum_square": lambda x: x * x,
    "l2": lambda x: x * x,
}
SUM_FINISH = {"l2": tirx.sqrt}
EXTREME_MODES = ("max", "min", "prod", "log_sum_exp")


def reduce_norm(shape: Shape, source: Sequence[int | None], mode: str, dtype: str):
    """``C = finish(sum(term(A)))`` over the axes ``source`` does not name (see
    ``SUM_TERMS``); input A."""
    return reduce_sum(shape, source, 1.0, dtype, SUM_TERMS[mode], SUM_FINISH.get(mode))


def _reduced_axes(shape: Shape, source: Sequence[int | None], name: str) -> dict:
    return {d: te.reduce_axis((0, shape[d]), name=f"{name}{d}")
            for d in range(len(shape)) if d not in source}


def reduce_extreme(shape: Shape, source: Sequence[int | None], mode: str, dtype: str):
    """``C`` = the max, min, product or log-sum-exp of A over the axes ``source`` does not
    name; input A."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    out_shape = tuple(1 if d is None else shape[d] for d in source)
    axes = _reduced_axes(shape, source, "r")
    if not axes:  # nothing reduced: each of these is its one term
        return [a], [te.compute(out_shape, lambda *i: a[_input_index(i, source, {})],
                                name="copy")]

    def element(index, reduce_axes):
        return a[_input_index(index, source, reduce_axes)]

    if mode == "prod":
        product = te.comm_reducer(lambda x, y: x * y, lambda t: tirx.const(1, t),
                                  name="product")
        total = te.compute(out_shape, lambda *i: product(
            element(i, axes).astype(ACCUMULATOR), axis=list(axes.values())), name="reduce")
        return [a], [te.compute(out_shape, lambda *i: total[i].astype(dtype), name="out")]
    reducer = _extreme_reducer(largest=mode != "min")
    extreme = te.compute(out_shape, lambda *i: reducer(element(i, axes), axis=list(
        axes.values())), name="reduce")
    if mode != "log_sum_exp":
        return [a], [extreme]
    # log(sum(exp(a - m))) + m with m the max: every exp is at most 1. A slice of -inf only
    # keeps m = -inf (exp(-inf - -inf) would be NaN): its log-sum-exp is -inf.
    inner = _reduced_axes(shape, source, "s")
    shifted = te.compute(out_shape, lambda *i: te.sum(
        te.exp(element(i, inner) - extreme[i]).astype(ACCUMULATOR),
        axis=list(inner.values())), name="reduce_exp")
    out = te.compute(out_shape, lambda *i: tirx.Select(
        extreme[i] == tirx.const(float("-inf"), dtype), extreme[i],
        te.log(shifted[i]).astype(dtype) + extreme[i]), name="out")
    return [a], [out]


def reduce_mode_gradient(shape: Shape, source: Sequence[int | None], mode: str, dtype: str):
    """The adjoint of a reduction of ``mode`` at input X and output Y for the upstream
    gradient G (G and Y of the reduced shape); inputs G, X, Y.

    ``l1``: ``G * sign(X)``; ``sum_square``: ``2 G X``; ``l2``: ``G X / Y`` (0 where Y is 0,
    the subgradient PyTorch takes); ``max``/``min``: ``G`` at every element equal to Y, 0
    elsewhere (the operator divides G by the count of ties first, ``extreme_count``);
    ``prod``: ``G Y / X`` (infinite or NaN at a zero X); ``log_sum_exp``: ``G exp(X - Y)``.
    """
    out_shape = tuple(1 if d is None else shape[d] for d in source)
    g = te.placeholder(out_shape, dtype=dtype, name="G")
    x = te.placeholder(shape, dtype=dtype, name="X")
    y = te.placeholder(out_shape, dtype=dtype, name="Y")
    zero = tirx.const(0, dtype)

    def reduced(index):
        return tuple(0 if d is None else index[d] for d in source)

    def body(*i):
        gi, xi, yi = g[reduced(i)], x[i], y[reduced(i)]
        if mode == "l1":
            return tirx.Select(xi > zero, gi, tirx.Select(xi < zero, -gi, zero))
        if mode == "sum_square":
            return tirx.const(2, dtype) * gi * xi
        if mode == "l2":
            return tirx.Select(yi == zero, zero, gi * xi / yi)
        if mode in ("max", "min"):
            return tirx.Select(xi == yi, gi, zero)
        if mode == "prod":
            return gi * yi / xi
        return gi * te.exp(xi - yi)

    return [g, x, y], [te.compute(shape, body, name="reduce_grad")]


def extreme_count(shape: Shape, source: Sequence[int | None], dtype: str):
    """``C`` = how many elements of each slice of X equal its reduction Y (the ties of a max
    or min, which share its gradient); inputs X, Y (Y of the reduced shape)."""
    out_shape = tuple(1 if d is None else shape[d] for d in source)
    x = te.placeholder(shape, dtype=dtype, name="X")
    y = te.placeholder(out_shape, dtype=dtype, name="Y")
    axes = _reduced_axes(shape, source, "r")
    one, zero = tirx.const(1, dtype), tirx.const(0, dtype)
    if not axes:
        return [x, y], [te.compute(out_shape, lambda *i: one, name="count")]
    count = te.compute(out_shape, lambda *i: te.sum(tirx.Select(
        x[_input_index(i, source, axes)] == y[i], one, zero), axis=list(axes.values())),
        name="count")
    return [x, y], [count]


def _extreme_reducer(largest: bool):
    """Max (``largest``) or min, starting from -inf (+inf) for floats: TVM's ``te.max``
    starts from the lowest finite value, so the max of a slice of -inf came out -3.4e38."""
    def identity(value_type):
        if tvm.runtime.DataType(value_type).type_code == tvm.runtime.DataTypeCode.FLOAT:
            return tirx.const(-math.inf if largest else math.inf, value_type)
        return tirx.min_value(value_type) if largest else tirx.max_value(value_type)

    return te.comm_reducer(lambda x, y: tirx.max(x, y) if largest else tirx.min(x, y),
                           identity, name="max" if largest else "min")


def _arg_reducer(largest: bool, last: bool):
    """A reducer of (index, value) pairs keeping the pair with the larger (smaller) value,
    the earlier (later) index among equal values. The reduction adds indices in order, so
    ``later`` is the pair just read."""
    def combine(kept, later):
        if largest:
            better = later[1] >= kept[1] if last else later[1] > kept[1]
        else:
            better = later[1] <= kept[1] if last else later[1] < kept[1]
        # Nothing kept yet (index -1): the first value read is kept whatever it is, so a
        # slice of -inf (+inf for the min) has its first (last) position, not -1.
        better = tirx.Or(kept[0] < 0, better)
        return (tirx.Select(better, later[0], kept[0]),
                tirx.Select(better, later[1], kept[1]))

    def identity(index_type, value_type):
        worst = tirx.min_value(value_type) if largest else tirx.max_value(value_type)
        return tirx.const(-1, index_type), worst

    return te.comm_reducer(combine, identity, name="arg_extreme")


def _arg_index(a: te.Tensor, shape: Shape, axis: int, largest: bool, last: bool, name: str):
    """The position along ``axis`` of each slice's extreme, as an int32 tensor of ``shape``
    without ``axis``."""
    kept = shape[:axis] + shape[axis + 1:]
    k = te.reduce_axis((0, shape[axis]), name="k")
    reducer = _arg_reducer(largest, last)

    def body(*i):
        i = i[:len(kept)]  # a vector's one index is shaped (1,): its index is not read
        return reducer((k.var.astype("int32"), a[(*i[:axis], k, *i[axis:])]), axis=k)

    index, _ = te.compute(kept or (1,), body, name=name)
    return index


def arg_extreme(shape: Shape, axis: int, keepdims: bool, largest: bool, last: bool,
                dtype: str):
    """``C`` = the index along ``axis`` of the max (``largest``) or min of A, the last among
    ties where ``last``, as a float of ``dtype``; ``axis`` kept as size 1 under
    ``keepdims``, else dropped (a vector's index is shaped (1,)); input A."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    index = _arg_index(a, shape, axis, largest, last, "reduce")
    if keepdims:
        out_shape = shape[:axis] + (1,) + shape[axis + 1:]
        out = te.compute(out_shape, lambda *i: index[(i[:axis] + i[axis + 1:]) or (0,)]
                         .astype(dtype), name="out")
    else:
        out = te.compute(index.shape, lambda *i: index[i].astype(dtype), name="out")
    return [a], [out]


def hardmax(shape: Shape, axis: int, dtype: str):
    """``C`` = 1 where A's element is the first max of its slice along ``axis``, 0
    elsewhere; input A."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    index = _arg_index(a, shape, axis, True, False, "reduce")
    one, zero = tirx.const(1, dtype), tirx.const(0, dtype)
    def body(*i):
        slice_index = (i[:axis] + i[axis + 1:]) or (0,)
        return tirx.Select(index[slice_index] == i[axis].astype("int32"), one, zero)

    out = te.compute(shape, body, name="out")
    return [a], [out]
