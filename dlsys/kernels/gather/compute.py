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


def _row(id_value: tirx.PrimExpr, rows: int, from_end: bool) -> tirx.PrimExpr:
    """The table row an id picks: the id itself, or for a lookup that counts negative ids
    from the end, ``id + rows`` where the id is negative."""
    row = id_value.astype("int32")
    return tirx.Select(row < 0, row + rows, row) if from_end else row


def embedding(table_shape: Shape, ids_shape: Shape, ids_dtype: str, from_end: bool,
              dtype: str):
    """``out[*i, :] = W[ids[*i], :]``, of shape ``ids.shape + (dim,)``; a negative id counts
    from the end where ``from_end``. Ids were checked against the table's rows where they
    were fed."""
    rows, dim = table_shape
    table = te.placeholder(table_shape, dtype=dtype, name="W")
    ids = te.placeholder(ids_shape, dtype=ids_dtype, name="ids")
    out = te.compute((*ids_shape, dim),
                     lambda *i: table[_row(ids[i[:-1]], rows, from_end), i[-1]],
                     name="gather")
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


def embedding_gradient(table_shape: Shape, ids_shape: Shape, ids_dtype: str, from_end: bool,
                       dtype: str):
    """``dW[v, :] = sum of G[n, :] over the positions n whose id is v`` (or ``v - rows``,
    where ``from_end``): a scatter-add.

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
            row, col = _row(index[tuple(at)], rows, from_end), c * chunk + d
            return tirx.BufferStore(out, out[row, col] + g[(*at, col)], [row, col])

        scatter = _loop("c", dim // chunk, lambda c: _loop("n", positions, lambda n: _loop(
            "d", chunk, lambda d: add(c, n, d),
            tirx.ForKind.VECTORIZED if chunk % 4 == 0 else tirx.ForKind.SERIAL)),
            tirx.ForKind.PARALLEL if dim > chunk else tirx.ForKind.SERIAL)
        return tirx.SeqStmt([zero, scatter])

    out = te.extern([table_shape], [grad, ids], body, name="scatter_add", dtype=dtype)
    return [grad, ids], [out]


# A take's constant indices as runs ``(out_start, in_start, step, length)``: indices
# ``in_start + k * step`` at output positions ``out_start + k``, for k below ``length``.
Runs = tuple[tuple[int, int, int, int], ...]


def _clamp(value, extent: int):
    return tirx.min(tirx.max(value, 0), extent - 1)


def take(shape: Shape, axis: int, runs: Runs, dtype: str):
    """``C = numpy.take(A, indices, axis)`` for indices fixed when the kernel is built, given
    as ``runs``: each output position finds its run (a short select chain: a range, a
    reversal or one index are one run) and loads the index it names."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    count = sum(length for *_, length in runs)
    out_shape = tuple(count if d == axis else n for d, n in enumerate(shape))

    def body(*index):
        i = index[axis]
        source = None
        for out_start, in_start, step, length in reversed(runs):
            here = in_start + (i - out_start) * step
            source = here if source is None else \
                tirx.Select(i < out_start + length, here, source)
        at = _clamp(source, shape[axis])
        return a[tuple(at if d == axis else v for d, v in enumerate(index))]

    return [a], [te.compute(out_shape, body, name="take")]


def take_gradient(shape: Shape, axis: int, runs: Runs, dtype: str):
    """The adjoint of ``take`` (``shape`` is the table's): each element of the table sums
    the gradient at every output position that took it, one term per run that holds it
    (an index repeated in several runs gathers all of them)."""
    count = sum(length for *_, length in runs)
    g_shape = tuple(count if d == axis else n for d, n in enumerate(shape))
    g = te.placeholder(g_shape, dtype=dtype, name="G")

    def body(*index):
        j = index[axis]
        total = None
        for out_start, in_start, step, length in runs:
            offset = (j - in_start) * (1 if step > 0 else -1)
            stride = abs(step)
            inside = tirx.all(offset >= 0, offset < length * stride)
            if stride > 1:
                inside = tirx.all(inside, tirx.floormod(offset, stride) == 0)
            at = _clamp(out_start + tirx.floordiv(offset, stride), count)
            term = tirx.Select(inside, g[tuple(at if d == axis else v
                                               for d, v in enumerate(index))],
                               tirx.const(0, dtype))
            total = term if total is None else total + term
        return total

    return [g], [te.compute(tuple(shape), body, name="take_gradient")]


def as_float(shape: Shape, source_dtype: str, dtype: str):
    """``C = A`` converted from ``source_dtype`` (the type an input was fed in: integer ids,
    or a float copied) to the graph's floating-point type."""
    a = te.placeholder(shape, dtype=source_dtype, name="A")
    return [a], [te.compute(shape, lambda *i: a[i].astype(dtype), name="as_float")]
