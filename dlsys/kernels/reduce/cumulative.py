"""Cumulative sums and products along one axis (numpy's ``cumsum`` and ``cumprod``, ONNX's
CumSum and CumProd with their ``exclusive`` and ``reverse`` options), and the recurrence
the product's gradient needs: a running value per line, written as its own loops.

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


def _lines(shape: Shape, axis: int, reverse: bool, dtype: str, body_of_line):
    """An extern kernel over (outer, length, inner) lines: ``body_of_line(at, o, i_loop)``
    gives one outer slice's statement, ``at(o, k, i)`` the index of step k (counted from
    the end where ``reverse``) and ``i_loop(body)`` the loop over the inner lanes."""
    before, after = tuple(shape[:axis]), tuple(shape[axis + 1:])
    outer, length, inner = math.prod(before), shape[axis], math.prod(after)
    # Whole vectors of lines side by side; a short or ragged inner extent runs serially.
    inner_kind = tirx.ForKind.VECTORIZED if inner % 4 == 0 and inner <= 64 \
        else tirx.ForKind.SERIAL

    def at(o, k, i):
        position = (length - 1 - k) if reverse else k
        return (*_unravel(o, before), position, *_unravel(i, after))

    def lanes(store):
        return _loop("i", inner, store, inner_kind)

    return _loop("o", outer, lambda o: body_of_line(at, o, lanes),
                 tirx.ForKind.PARALLEL if outer > 1 else tirx.ForKind.SERIAL)


def cumulative(shape: Shape, axis: int, exclusive: bool, reverse: bool, operation: str,
               dtype: str):
    """``out`` of ``shape``: along ``axis``, the sum (``operation="sum"``) or product of
    ``x`` up to each position (from the end with ``reverse``), the position itself left out
    with ``exclusive`` (the first step is then 0, or 1)."""
    length = shape[axis]
    x = te.placeholder(shape, dtype=dtype, name="X")
    combine = (lambda a, b: a + b) if operation == "sum" else (lambda a, b: a * b)
    empty = tirx.const(0 if operation == "sum" else 1, dtype)

    def body(ins, outs):
        source, out = ins[0], outs[0]

        def line(at, o, lanes):
            first = lanes(lambda i: tirx.BufferStore(
                out, empty if exclusive else source[at(o, 0, i)], list(at(o, 0, i))))

            def step(k):
                k = k + 1
                return lanes(lambda i: tirx.BufferStore(
                    out, combine(out[at(o, k - 1, i)], source[at(o, k - 1 if exclusive
                                                                 else k, i)]),
                    list(at(o, k, i))))

            if length == 1:
                return first
            return tirx.SeqStmt([first, _loop("k", length - 1, step)])

        return _lines(shape, axis, reverse, dtype, line)

    out = te.extern([shape], [x], body, name=f"cumulative_{operation}", dtype=dtype)
    return [x], [out]


def cumulative_sum(shape: Shape, axis: int, exclusive: bool, reverse: bool, dtype: str):
    """numpy's ``cumsum`` along ``axis`` with ONNX's options (see ``cumulative``)."""
    return cumulative(shape, axis, exclusive, reverse, "sum", dtype)


def cumulative_product(shape: Shape, axis: int, exclusive: bool, reverse: bool, dtype: str):
    """numpy's ``cumprod`` along ``axis`` with ONNX's options (see ``cumulative``)."""
    return cumulative(shape, axis, exclusive, reverse, "prod", dtype)


def cumulative_product_adjoint(shape: Shape, axis: int, exclusive: bool, reverse: bool,
                               dtype: str):
    """``R`` with ``dx = P * R`` the gradient of a cumulative product (``P`` its exclusive
    product): in step order, ``R[k] = g[k] + x[k+1] * R[k+1]`` from ``R[n-1] = g[n-1]``, or
    exclusive ``R[k] = g[k+1] + x[k+1] * R[k+1]`` from 0. No division, so zeros in ``x``
    give the exact gradient."""
    length = shape[axis]
    x = te.placeholder(shape, dtype=dtype, name="X")
    grad = te.placeholder(shape, dtype=dtype, name="G")

    def body(ins, outs):
        source, g = ins
        out = outs[0]

        def line(at, o, lanes):
            last = length - 1
            first = lanes(lambda i: tirx.BufferStore(
                out, tirx.const(0, dtype) if exclusive else g[at(o, last, i)],
                list(at(o, last, i))))

            def step(back):
                k = last - 1 - back
                return lanes(lambda i: tirx.BufferStore(
                    out, (g[at(o, k + 1, i)] if exclusive else g[at(o, k, i)])
                    + source[at(o, k + 1, i)] * out[at(o, k + 1, i)], list(at(o, k, i))))

            if length == 1:
                return first
            return tirx.SeqStmt([first, _loop("k", last, step)])

        return _lines(shape, axis, reverse, dtype, line)

    out = te.extern([shape], [x, grad], body, name="cumulative_product_adjoint", dtype=dtype)
    return [x, grad], [out]
