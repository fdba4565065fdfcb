"""Compute definitions of layout changes: kernels that move elements and compute nothing."""

from __future__ import annotations

from collections.abc import Sequence

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
