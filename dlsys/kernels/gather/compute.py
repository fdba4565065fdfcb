"""The gather family's compute: rows of a table picked by integer ids (an embedding) and
the adjoint, which adds each id's gradient rows back into its row of the table.

The ids' type (int32 or int64, as fed) is a parameter of each kernel, so ids are read as
they were fed, never through a float.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape
from dlsys.kernels.common.loops import VECTOR_LANES


def embedding(table_shape: Shape, ids_shape: Shape, ids_dtype: str, dtype: str):
    """``out[*i, :] = W[ids[*i], :]``, of shape ``ids.shape + (dim,)``. Ids were checked
    against the table's rows where they were fed."""
    rows, dim = table_shape
    table = te.placeholder(table_shape, dtype=dtype, name="W")
    ids = te.placeholder(ids_shape, dtype=ids_dtype, name="ids")
    out = te.compute((*ids_shape, dim),
                     lambda *i: table[ids[i[:-1]].astype("int32"), i[-1]], name="gather")
    return [table, ids], [out]


def _unravel(flat: tirx.PrimExpr, shape: Shape) -> list[tirx.PrimExpr]:
    """The index of ``shape`` at row-major position ``flat``."""
    index = []
    for extent in reversed(shape):
        index.append(flat % extent)
        flat = flat // extent
    return index[::-1]


def _loop(name: str, extent: int, body, kind=tirx.ForKind.SERIAL) -> tirx.Stmt:
    var = tirx.Var(name, "int32")
    return tirx.For(var, tirx.const(0, "int32"), tirx.const(extent, "int32"), kind, body(var))


def _column_chunk(dim: int) -> int:
    """Columns one parallel task owns: whole vectors, so that tasks never share a column."""
    return next((c for c in (VECTOR_LANES, VECTOR_LANES // 2, VECTOR_LANES // 4)
                 if dim % c == 0 and dim > c), dim)


def embedding_gradient(table_shape: Shape, ids_shape: Shape, ids_dtype: str, dtype: str):
    """``dW[v, :] = sum of G[n, :] over the positions n whose id is v``: a scatter-add.

    Deterministic: each column chunk belongs to one task, which walks the positions in
    order, so every row of ``dW`` adds its terms in the same order at every run (atomic adds
    from several threads would not). Its cost is one pass over ``G`` (``positions * dim``
    adds), where a reduction over the positions for every row would read ``G`` once per
    row of the table.
    """
    rows, dim = table_shape
    positions = math.prod(ids_shape)
    grad = te.placeholder((*ids_shape, dim), dtype=dtype, name="G")
    ids = te.placeholder(ids_shape, dtype=ids_dtype, name="ids")
    chunk = _column_chunk(dim)

    def body(ins, outs):
        g, index = ins
        (out,) = outs
        zero = _loop("v", rows, lambda v: _loop(
            "d", dim, lambda d: tirx.BufferStore(out, tirx.const(0, dtype), [v, d]),
            tirx.ForKind.VECTORIZED if dim % 4 == 0 else tirx.ForKind.SERIAL))

        def add(c, n, d):
            at = _unravel(n, ids_shape)
            row, col = index[tuple(at)].astype("int32"), c * chunk + d
            return tirx.BufferStore(out, out[row, col] + g[(*at, col)], [row, col])

        scatter = _loop("c", dim // chunk, lambda c: _loop("n", positions, lambda n: _loop(
            "d", chunk, lambda d: add(c, n, d),
            tirx.ForKind.VECTORIZED if chunk % 4 == 0 else tirx.ForKind.SERIAL)),
            tirx.ForKind.PARALLEL if dim > chunk else tirx.ForKind.SERIAL)
        return tirx.SeqStmt([zero, scatter])

    out = te.extern([table_shape], [grad, ids], body, name="scatter_add", dtype=dtype)
    return [grad, ids], [out]
