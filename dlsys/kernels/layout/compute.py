"""Compute definitions of layout changes: kernels that move elements and compute nothing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import tvm
from tvm import te

Shape = tuple[int, ...]


def transpose(shape: Shape, perm: Sequence[int], dtype: str):
    """``C = A.transpose(perm)``: output axis ``d`` is input axis ``perm[d]``.

    Written over the output, so each element is stored once, in order, and the injective
    schedule vectorises the stores; the loads stride through ``A``.
    """
    a = te.placeholder(shape, dtype=dtype, name="A")
    out_shape = tuple(shape[p] for p in perm)

    def body(*index):
        source = [None] * len(shape)
        for d, p in enumerate(perm):
            source[p] = index[d]
        return a[tuple(source)]

    return [a], [te.compute(out_shape, body, name="transpose")]


def _run_length(start: int, stop: int, step: int) -> int:
    return len(range(start, stop, step))


def slice_axis(shape: Shape, axis: int, start: int, stop: int, step: int, dtype: str):
    """``C = A[..., start:stop:step, ...]`` along ``axis`` (non-negative, in bounds; a
    negative step walks backwards from ``start``).

    Written over the output, as ``transpose``: each element stored once, in order; the
    loads are a contiguous run of the input for every index before ``axis``.
    """
    a = te.placeholder(shape, dtype=dtype, name="A")
    length = _run_length(start, stop, step)
    out_shape = tuple(length if d == axis else n for d, n in enumerate(shape))

    def body(*index):
        return a[tuple(start + i * step if d == axis else i for d, i in enumerate(index))]

    return [a], [te.compute(out_shape, body, name="slice")]


def slice_axis_gradient(shape: Shape, axis: int, start: int, stop: int, step: int,
                        dtype: str):
    """The adjoint of ``slice_axis``: ``G`` (the slice's shape) written into zeros of
    ``shape`` at ``[start:stop:step]`` along ``axis``, in one pass over the output."""
    length = _run_length(start, stop, step)
    g_shape = tuple(length if d == axis else n for d, n in enumerate(shape))
    g = te.placeholder(g_shape, dtype=dtype, name="G")

    def body(*index):
        # The distance from ``start`` in the step's direction, and where it lands in G.
        offset = (index[axis] - start) * (1 if step > 0 else -1)
        stride = abs(step)
        inside = tvm.tirx.all(offset >= 0, offset < length * stride)
        if stride > 1:
            inside = tvm.tirx.all(inside, tvm.tirx.floormod(offset, stride) == 0)
        # Clamped so that the load stays in bounds where the select discards it.
        at = tvm.tirx.min(tvm.tirx.max(tvm.tirx.floordiv(offset, stride), 0), length - 1)
        value = g[tuple(at if d == axis else i for d, i in enumerate(index))]
        return tvm.tirx.Select(inside, value, tvm.tirx.const(0, dtype))

    return [g], [te.compute(tuple(shape), body, name="slice_gradient")]


def concat(shapes: Sequence[Shape], axis: int, dtype: str):
    """``C = concatenate(A0, A1, ..., axis)`` (the axis non-negative; the shapes checked).

    Written over the output: each element is a load from the one input whose run along
    ``axis`` holds it, found by halving the inputs at each test (an ``if_then_else``, so
    only that input's load runs: with a select every input was loaded, and a 24-way concat
    of (8, 32, 14, 14) tensors ran 19 ms against 3.4 ms so, on the shared 2-core znver4).
    """
    inputs = [te.placeholder(s, dtype=dtype, name=f"A{i}") for i, s in enumerate(shapes)]
    starts = [sum(s[axis] for s in shapes[:i]) for i in range(len(shapes))]
    out_shape = tuple(sum(s[axis] for s in shapes) if d == axis else n
                      for d, n in enumerate(shapes[0]))

    def load(i, index):
        at = tvm.tirx.min(tvm.tirx.max(index[axis] - starts[i], 0), shapes[i][axis] - 1)
        return inputs[i][tuple(at if d == axis else v for d, v in enumerate(index))]

    def pick(low: int, high: int, index):
        # Inputs low..high-1, halved at each test: only the chosen input's load runs.
        if high - low == 1:
            return load(low, index)
        middle = (low + high) // 2
        return tvm.tirx.if_then_else(index[axis] < starts[middle], pick(low, middle, index),
                                     pick(middle, high, index))

    def body(*index):
        return pick(0, len(shapes), index)

    return inputs, [te.compute(out_shape, body, name="concat")]


def tile(shape: Shape, repeats: Sequence[int], dtype: str):
    """``C = numpy.tile(A, repeats)`` (one repeat count per axis): ``C[i] = A[i % shape]``."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    out_shape = tuple(n * r for n, r in zip(shape, repeats))

    def body(*index):
        return a[tuple(i if r == 1 else tvm.tirx.floormod(i, n)
                       for i, n, r in zip(index, shape, repeats))]

    return [a], [te.compute(out_shape, body, name="tile")]


def trilu(shape: Shape, upper: bool, k: int, dtype: str):
    """``C = triu(A, k)`` (``upper``) or ``tril(A, k)`` over the last two axes: the elements
    on and above (below) the ``k``-th diagonal, zeros elsewhere."""
    a = te.placeholder(shape, dtype=dtype, name="A")

    def body(*index):
        row, col = index[-2], index[-1]
        keep = col - row >= k if upper else col - row <= k
        return tvm.tirx.Select(keep, a[index], tvm.tirx.const(0, dtype))

    return [a], [te.compute(tuple(shape), body, name="trilu")]


# Pads: ``pads`` holds (before, after) per axis; ``mode`` is "constant", "edge" or "reflect".
def _pad_source(i, n: int, before: int, mode: str):
    """The input index that output index ``i`` (of an axis of ``n`` padded by ``before``)
    copies, clamped in bounds, and whether it lies inside the input."""
    j = i - before
    inside = tvm.tirx.all(j >= 0, j < n)
    if mode == "reflect" and n > 1:
        # Mirrored about the first and last elements, which are not repeated.
        j = tvm.tirx.Select(j < 0, -j, tvm.tirx.Select(j >= n, 2 * (n - 1) - j, j))
    return tvm.tirx.min(tvm.tirx.max(j, 0), n - 1), inside


def pad(shape: Shape, pads: Sequence[tuple[int, int]], mode: str, value: float, dtype: str):
    """``C = numpy.pad(A, pads, mode)`` with ``constant_values=value`` for the constant
    mode; every axis's source index is found on its own, as numpy pads one axis after
    another."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    out_shape = tuple(n + b + e for n, (b, e) in zip(shape, pads))

    def body(*index):
        sources = [_pad_source(i, n, b, mode) for i, n, (b, _) in zip(index, shape, pads)]
        loaded = a[tuple(j for j, _ in sources)]
        if mode != "constant":
            return loaded
        inside = tvm.tirx.all(*[ok for (_, ok), (b, e) in zip(sources, pads) if b or e]) \
            if any(b or e for b, e in pads) else tvm.tirx.const(True, "bool")
        return tvm.tirx.Select(inside, loaded, tvm.tirx.const(value, dtype))

    return [a], [te.compute(out_shape, body, name="pad")]


def _pad_preimage(j, n: int, before: int, after: int, mode: str) -> list:
    """``(condition, output index)`` for every output index of a padded axis that copies
    input index ``j``: the adjoint sums the gradient over them (a handful per axis, since
    pads are a few elements)."""
    terms = [(None, j + before)]
    if mode == "edge":
        terms += [(j == 0, tvm.tirx.const(k, "int32")) for k in range(before)]
        terms += [(j == n - 1, tvm.tirx.const(before + n + k, "int32")) for k in range(after)]
    elif mode == "reflect":
        if before:  # output index before - j copies j, for 1 <= j <= before
            terms.append((tvm.tirx.all(j >= 1, j <= before),
                          tvm.tirx.max(before - j, 0)))
        if after:  # output index before + 2 (n - 1) - j copies j, for n-1-after <= j <= n-2
            last = before + n + after - 1
            terms.append((tvm.tirx.all(j >= n - 1 - after, j <= n - 2),
                          tvm.tirx.min(before + 2 * (n - 1) - j, last)))
    return terms


def pad_gradient(shape: Shape, pads: Sequence[tuple[int, int]], mode: str, dtype: str):
    """The adjoint of ``pad`` (``shape`` is the unpadded input's): each input element's
    gradient is the sum of ``G`` over the output elements that copy it, one term per
    combination of its axes' copies (the constant mode's padding copies nothing)."""
    g_shape = tuple(n + b + e for n, (b, e) in zip(shape, pads))
    g = te.placeholder(g_shape, dtype=dtype, name="G")

    def body(*index):
        # A one-element axis reflects onto itself: every padded copy is of that element.
        per_axis = [_pad_preimage(j, n, b, e, "edge" if mode == "reflect" and n == 1 else mode)
                    for j, n, (b, e) in zip(index, shape, pads)]
        total = None
        for combination in itertools.product(*per_axis):
            conditions = [c for c, _ in combination if c is not None]
            value = g[tuple(at for _, at in combination)]
            if conditions:
                value = tvm.tirx.Select(tvm.tirx.all(*conditions), value,
                                        tvm.tirx.const(0, dtype))
            total = value if total is None else total + value
        return total

    return [g], [te.compute(tuple(shape), body, name="pad_gradient")]
