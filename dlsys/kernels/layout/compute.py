"""Compute definitions of layout changes: kernels that move elements and compute nothing."""

from __future__ import annotations

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


def slice_axis(shape: Shape, axis: int, start: int, stop: int, dtype: str):
    """``C = A[..., start:stop, ...]`` along ``axis`` (non-negative, in bounds).

    Written over the output, as ``transpose``: each element stored once, in order; the
    loads are a contiguous run of the input for every index before ``axis``.
    """
    a = te.placeholder(shape, dtype=dtype, name="A")
    out_shape = tuple(stop - start if d == axis else n for d, n in enumerate(shape))

    def body(*index):
        return a[tuple(i + start if d == axis else i for d, i in enumerate(index))]

    return [a], [te.compute(out_shape, body, name="slice")]


def slice_axis_gradient(shape: Shape, axis: int, start: int, stop: int, dtype: str):
    """The adjoint of ``slice_axis``: ``G`` (the slice's shape) written into zeros of
    ``shape`` at ``[start:stop]`` along ``axis``, in one pass over the output."""
    g_shape = tuple(stop - start if d == axis else n for d, n in enumerate(shape))
    g = te.placeholder(g_shape, dtype=dtype, name="G")

    def body(*index):
        inside = tvm.tirx.all(index[axis] >= start, index[axis] < stop)
        # Clamped so that the load stays in bounds where the select discards it.
        at = tvm.tirx.min(tvm.tirx.max(index[axis] - start, 0), stop - start - 1)
        value = g[tuple(at if d == axis else i for d, i in enumerate(index))]
        return tvm.tirx.Select(inside, value, tvm.tirx.const(0, dtype))

    return [g], [te.compute(tuple(shape), body, name="slice_gradient")]
