"""Small builders for the hand-written loop nests of the attention kernels (TIR statements
inside a ``te.extern``): loops, local buffers, and sums written out term by term.

A sum over a short fixed axis (a head dimension, a block of keys) is written as one
expression, so that the vectorised loop around it keeps its running value in a register
and stores once, where a loop over the axis would load and store the partial at each term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import tirx

from dlsys.kernels.attention.schedule import ROWS_AT_ONCE

Body = Callable[..., tirx.Stmt]


def const(value, dtype: str) -> tirx.PrimExpr:
    return tirx.const(value, dtype)


def index(value: int) -> tirx.PrimExpr:
    return tirx.const(value, "int32")


def loop(name: str, extent, body: Body, kind: tirx.ForKind = tirx.ForKind.SERIAL,
         start=0) -> tirx.Stmt:
    """``for name in range(start, start + extent): body(name)``; ``extent`` may be an
    expression (a causal block's key count)."""
    var = tirx.Var(name, "int32")
    lo = index(start) if isinstance(start, int) else start
    count = index(extent) if isinstance(extent, int) else extent
    return tirx.For(var, lo, count, kind, body(var))


def vector_loop(name: str, extent: int, body: Body) -> tirx.Stmt:
    """A loop LLVM runs as vectors: ``extent`` is a whole number of registers."""
    return loop(name, extent, body, tirx.ForKind.VECTORIZED)


def seq(*stmts: tirx.Stmt) -> tirx.Stmt:
    flat = [s for s in stmts if s is not None]
    return flat[0] if len(flat) == 1 else tirx.SeqStmt(flat)


def local(name: str, shape: Sequence[int], dtype: str) -> tirx.Buffer:
    """A scratch buffer of one parallel task (on its stack)."""
    return tirx.decl_buffer(tuple(shape), dtype, name, scope="local")


def allocate(buffers: Sequence[tirx.Buffer], body: tirx.Stmt) -> tirx.Stmt:
    """``body`` with ``buffers`` allocated around it."""
    for buffer in reversed(buffers):
        body = tirx.AllocBuffer(buffer, body)
    return body


def store(buffer: tirx.Buffer, value: tirx.PrimExpr, indices: Sequence) -> tirx.Stmt:
    return tirx.BufferStore(buffer, value, list(indices))


def unrolled_sum(term: Callable[[int], tirx.PrimExpr], count: int,
                 chains: int = 2) -> tirx.PrimExpr:
    """``term(0) + ... + term(count - 1)`` as ``chains`` running sums added at the end:
    each chain is a run of multiply-adds LLVM contracts to FMAs, and the chains are
    independent, so their latencies overlap."""
    partials = []
    for c in range(min(chains, count)):
        total = term(c)
        for n in range(c + chains, count, chains):
            total = total + term(n)
        partials.append(total)
    while len(partials) > 1:
        partials = [partials[n] + partials[n + 1] if n + 1 < len(partials) else partials[n]
                    for n in range(0, len(partials), 2)]
    return partials[0]


def unrolled_max(term: Callable[[int], tirx.PrimExpr], count: int) -> tirx.PrimExpr:
    terms = [term(n) for n in range(count)]
    while len(terms) > 1:
        terms = [tirx.max(terms[n], terms[n + 1]) if n + 1 < len(terms) else terms[n]
                 for n in range(0, len(terms), 2)]
    return terms[0]




def rows_of_vectors(name: str, rows: int, lanes: int,
                    row: Callable[[tirx.PrimExpr, tirx.Var], tirx.Stmt]) -> tirx.Stmt:
    """``row(r, i)`` for every row ``r < rows`` and lane ``i < lanes``: a loop over groups
    of ``schedule.ROWS_AT_ONCE`` rows (the widest divisor of ``rows`` up to it), each group one
    vector loop whose body holds its rows' statements side by side."""
    group = max(g for g in range(1, ROWS_AT_ONCE + 1) if rows % g == 0)
    return loop(name, rows // group, lambda r: vector_loop("i", lanes, lambda i: seq(
        *(row(r * group + offset, i) for offset in range(group)))))
