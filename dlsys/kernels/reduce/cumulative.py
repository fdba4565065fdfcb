"""Cumulative sums along one axis (numpy's ``cumsum``, ONNX's CumSum with its ``exclusive``
and ``reverse`` options): a running total per line, written as its own loops.

The tensor is seen as (outer, length, inner) around the axis. Each outer slice is one
parallel task; within it the running totals of the ``inner`` lines advance together, one
step along the axis at a time, so the loads and stores of a step are contiguous (vectorised
where ``inner`` allows) and every total adds its terms in axis order, the same at every run.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape


def _loop(name: str, extent: int, body, kind=tirx.ForKind.SERIAL) -> tirx.Stmt:
    var = tirx.Var(name, "int32")
    return tirx.For(var, tirx.const(0, "int32"), tirx.const(extent, "int32"), kind, body(var))


def _unravel(flat, shape: Shape) -> list:
    """The index of ``shape`` at row-major position ``flat``."""
    index = []
    for extent in reversed(shape):
        index.append(flat % extent)
        flat = flat // extent
    return index[::-1]


def cumulative_sum(shape: Shape, axis: int, exclusive: bool, reverse: bool, dtype: str):
    """``out`` of ``shape``: along ``axis``, the sum of ``x`` up to each position (from the
    end with ``reverse``), the position itself left out with ``exclusive``."""
    before, after = tuple(shape[:axis]), tuple(shape[axis + 1:])
    outer, length, inner = math.prod(before), shape[axis], math.prod(after)
    x = te.placeholder(shape, dtype=dtype, name="X")
    # Whole vectors of lines side by side; a short or ragged inner extent runs serially.
    inner_kind = tirx.ForKind.VECTORIZED if inner % 4 == 0 and inner <= 64 \
        else tirx.ForKind.SERIAL

    def body(ins, outs):
        source, out = ins[0], outs[0]

        def at(o, k, i):
            # Step k of the line, counted from the end where reverse.
            position = (length - 1 - k) if reverse else k
            return (*_unravel(o, before), position, *_unravel(i, after))

        def first(o):
            return _loop("i", inner, lambda i: tirx.BufferStore(
                out, tirx.const(0, dtype) if exclusive else source[at(o, 0, i)],
                list(at(o, 0, i))), inner_kind)

        def step(o, k):
            k = k + 1
            return _loop("i", inner, lambda i: tirx.BufferStore(
                out, out[at(o, k - 1, i)]
                + (source[at(o, k - 1, i)] if exclusive else source[at(o, k, i)]),
                list(at(o, k, i))), inner_kind)

        def slice_(o):
            if length == 1:
                return first(o)
            return tirx.SeqStmt([first(o), _loop("k", length - 1, lambda k: step(o, k))])

        return _loop("o", outer, slice_,
                     tirx.ForKind.PARALLEL if outer > 1 else tirx.ForKind.SERIAL)

    out = te.extern([shape], [x], body, name="cumulative_sum", dtype=dtype)
    return [x], [out]
