"""The attention family's compute: ``softmax(Q K^T * scale [+ causal mask]) V`` without its
T x S matrix, and the adjoints, each as one loop nest written in TIR (``te.extern``).

TE cannot say "a running max and sum carried across blocks of keys", so the loops are
written out; they are their own schedule (the ``as_written`` family). Every kernel is one
parallel loop over (batch, head, block) tasks, each task owning the rows it writes, so the
results need no atomics and are the same at every run. Inside a task the loops run as
vectors across one block of positions (the ``lanes`` axis of each scratch buffer) while the
head dimension and the other block are summed term by term (``tir.unrolled_sum``): each
score, probability and accumulator row is a register-wide vector, and the scalars it meets
(a key's element, a value's element) are broadcast.

- ``attention_forward``: per (b, h, block of queries), over the blocks of keys the mask
  leaves: scores, the block max, the rescaling of the running sum and output (online
  softmax), then ``O = acc / sum`` and the row log-sum-exp ``L = max + log(sum)``. It writes
  ``O``, ``L`` or both (``writes``), so the same loops serve the output, the log-sum-exp the
  backward pass reads, and the two at once.
- ``attention_key_gradient``: per (b, h, block of keys), over the query blocks that see it:
  the probabilities recomputed from Q, K and L, then ``dV = P^T dO`` and
  ``dK = (P * (dO V^T - delta))^T Q * scale``, ``delta = rowsum(dO * O)`` an input (a
  graph node, computed once rather than by every task); writes dK, dV or both.
- ``attention_query_gradient``: per (b, h, block of queries), over the key blocks:
  ``dQ = (P * (dO V^T - delta)) K * scale``.

The causal mask keeps key ``j`` for query ``i`` where ``j <= i + S - T`` (PyTorch's
``is_causal`` for T == S); key blocks it hides entirely are skipped, which halves the work
of a causal square. Blocks past the end of a sequence are padded: their loads are clamped to
the last row and their scores masked, so every vector loop has a fixed length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import te, tirx

from dlsys.kernels.attention.schedule import block_lanes
from dlsys.kernels.attention.tir import (
    allocate,
    const,
    local,
    loop,
    rows_of_vectors,
    seq,
    store,
    unrolled_max,
    unrolled_sum,
    vector_loop,
)
from dlsys.kernels.common.compute import Shape
from dlsys.kernels.elementwise.fastmath import exp

WRITES = ("output", "lse", "both")


@dataclass(frozen=True)
class Layout:
    """The sizes of one attention call and the blocks its loops take."""

    lead: Shape       # the leading axes Q, K, V and O share: (B, H), or any others
    queries: int      # T
    keys: int         # S
    depth: int        # D, of queries and keys
    value_depth: int  # E, of values and the output
    scale: float
    causal: bool
    dtype: str

    @property
    def lanes(self) -> int:
        """Positions per block (``schedule.block_lanes``)."""
        return block_lanes(self.dtype)

    @property
    def key_block(self) -> int:
        return self.lanes

    def blocks(self, length: int) -> int:
        return -(-length // self.lanes)

    def visible(self, query, key) -> tirx.PrimExpr:
        """Whether ``query`` may attend to ``key`` (both positions, maybe past the end)."""
        inside = tirx.all(query < self.queries, key < self.keys)
        if not self.causal:
            return inside
        return tirx.all(inside, key <= query + (self.keys - self.queries))

    def last_key(self, first_query) -> tirx.PrimExpr:
        """The last key any query of the block from ``first_query`` sees, plus one."""
        if not self.causal:
            return const(self.keys, "int32")
        last = first_query + (self.lanes - 1 + self.keys - self.queries + 1)
        return tirx.max(tirx.min(last, self.keys), 0)

    def first_query(self, first_key) -> tirx.PrimExpr:
        """The first query that sees a key of the block from ``first_key``."""
        if not self.causal:
            return const(0, "int32")
        return tirx.max(first_key - (self.keys - self.queries), 0)

    def clamp_query(self, i):
        return tirx.min(i, self.queries - 1)

    def clamp_key(self, j):
        return tirx.min(j, self.keys - 1)


def _layout(q_shape: Shape, k_shape: Shape, v_shape: Shape, scale: float, causal: bool,
            dtype: str) -> Layout:
    *lead, queries, depth = q_shape
    return Layout(tuple(lead), queries, k_shape[-2], depth, v_shape[-1], float(scale),
                  bool(causal), dtype)


def _tasks(lay: Layout, blocks: int, body) -> tirx.Stmt:
    """One parallel loop over (leading index, block): ``body(at, block)``, ``at`` the index
    of the leading axes (b, h) as a tuple."""
    def task(t):
        at, rest = [], t // blocks
        for extent in reversed(lay.lead):
            at.insert(0, rest % extent)
            rest = rest // extent
        return body(tuple(at), t % blocks)

    return loop("task", math.prod(lay.lead) * blocks, task, tirx.ForKind.PARALLEL)


# ------------------------------------------------------------------------------ forward
def attention_forward(q_shape: Shape, k_shape: Shape, v_shape: Shape, scale: float,
                      causal: bool, writes: str, dtype: str):
    """Inputs Q (..., T, D), K (..., S, D), V (..., S, E), the leading axes (B, H) the same
    for all; outputs O (..., T, E) and/or L (..., T) as ``writes`` asks (``"both"``: O
    then L)."""
    lay = _layout(q_shape, k_shape, v_shape, scale, causal, dtype)
    q = te.placeholder(q_shape, dtype=dtype, name="Q")
    k = te.placeholder(k_shape, dtype=dtype, name="K")
    v = te.placeholder(v_shape, dtype=dtype, name="V")
    out_shape = (*lay.lead, lay.queries, lay.value_depth)
    lse_shape = (*lay.lead, lay.queries)
    shapes = {"output": [out_shape], "lse": [lse_shape], "both": [out_shape, lse_shape]}

    def body(ins, outs):
        named = dict(zip(("output", "lse") if writes == "both" else (writes,), outs))
        return _tasks(lay, lay.blocks(lay.queries), lambda at, blk: _forward_task(
            lay, *ins, named.get("output"), named.get("lse"), at, blk))

    outs = te.extern(shapes[writes], [q, k, v], body, name="attention",
                     dtype=[dtype] * len(shapes[writes]))
    return [q, k, v], [outs] if isinstance(outs, te.Tensor) else list(outs)


def _forward_task(lay: Layout, q, k, v, out, lse, at, blk) -> tirx.Stmt:
    n, dt = lay.lanes, lay.dtype
    qt = local("qt", (lay.depth, n), dt)            # Q^T of the block, times the scale
    acc = local("acc", (lay.value_depth, n), dt)     # the output's running sum, transposed
    p = local("p", (lay.key_block, n), dt)           # scores, then probabilities
    row_max, row_sum, alpha = (local(name, (n,), dt) for name in ("m", "l", "alpha"))
    i0 = blk * n
    scale = const(lay.scale, dt)
    init = seq(
        loop("d", lay.depth, lambda d: vector_loop("i", n, lambda i: store(
            qt, q[(*at, lay.clamp_query(i0 + i), d)] * scale, [d, i]))),
        loop("e", lay.value_depth, lambda e: vector_loop(
            "i", n, lambda i: store(acc, const(0, dt), [e, i]))),
        vector_loop("i", n, lambda i: seq(store(row_max, const(float("-inf"), dt), [i]),
                                          store(row_sum, const(0, dt), [i]))))
    key_blocks = (lay.last_key(i0) + (lay.key_block - 1)) // lay.key_block

    def key_block(kb):
        j0 = kb * lay.key_block
        return seq(
            _scores(lay, qt, k, p, at, i0, j0),
            _rescale(lay, p, row_max, row_sum, alpha, acc),
            rows_of_vectors("e", lay.value_depth, n, lambda e, i: store(
                acc, acc[e, i] * alpha[i] + unrolled_sum(
                    lambda j: p[j, i] * v[(*at, lay.clamp_key(j0 + j), e)], lay.key_block),
                [e, i])))

    finish = loop("i", tirx.min(n, lay.queries - i0), lambda i: seq(
        *([] if out is None else [loop("e", lay.value_depth, lambda e: store(
            out, acc[e, i] / row_sum[i], [*at, i0 + i, e]))]),
        *([] if lse is None else [store(lse, row_max[i] + tirx.log(row_sum[i]),
                                        [*at, i0 + i])])))
    return allocate([qt, acc, p, row_max, row_sum, alpha],
                    seq(init, loop("kb", key_blocks, key_block), finish))


def _scores(lay: Layout, qt, k, p, at, i0, j0) -> tirx.Stmt:
    """``p[j, i]``: the scaled score of query ``i0 + i`` and key ``j0 + j``, or ``-inf``
    where the mask hides it."""
    n, dt = lay.lanes, lay.dtype
    hidden = const(float("-inf"), dt)
    return rows_of_vectors("j", lay.key_block, n, lambda j, i: store(
        p, tirx.Select(lay.visible(i0 + i, j0 + j), unrolled_sum(
            lambda d: k[(*at, lay.clamp_key(j0 + j), d)] * qt[d, i], lay.depth), hidden),
        [j, i]))


def _rescale(lay: Layout, p, row_max, row_sum, alpha, acc) -> tirx.Stmt:
    """The online softmax's step: the new running max, ``alpha = exp(old - new)`` by which
    the running sum and output shrink, and the block's probabilities ``exp(s - max)``
    added to the running sum (``acc`` is rescaled by the caller, with the block's values)."""
    n = lay.lanes
    new_max = local("new_max", (n,), lay.dtype)
    return allocate([new_max], seq(
        vector_loop("i", n, lambda i: store(new_max, tirx.max(row_max[i], unrolled_max(
            lambda j: p[j, i], lay.key_block)), [i])),
        vector_loop("i", n, lambda i: seq(
            store(alpha, exp(row_max[i] - new_max[i]), [i]),
            store(row_max, new_max[i], [i]))),
        loop("j", lay.key_block, lambda j: vector_loop("i", n, lambda i: store(
            p, exp(p[j, i] - row_max[i]), [j, i]))),
        vector_loop("i", n, lambda i: store(
            row_sum, row_sum[i] * alpha[i] + unrolled_sum(lambda j: p[j, i], lay.key_block),
            [i]))))


# ------------------------------------------------------------------------------ backward
def _gradient_inputs(lay: Layout, q_shape: Shape, k_shape: Shape, v_shape: Shape):
    dt = lay.dtype
    out_shape = (*lay.lead, lay.queries, lay.value_depth)
    return [te.placeholder(q_shape, dtype=dt, name="Q"),
            te.placeholder(k_shape, dtype=dt, name="K"),
            te.placeholder(v_shape, dtype=dt, name="V"),
            te.placeholder(out_shape, dtype=dt, name="dO"),
            te.placeholder((*lay.lead, lay.queries), dtype=dt, name="L"),
            te.placeholder((*lay.lead, lay.queries), dtype=dt, name="delta")]


def attention_key_gradient(q_shape: Shape, k_shape: Shape, v_shape: Shape, scale: float,
                           causal: bool, writes: str, dtype: str):
    """Inputs Q, K, V, dO, L and ``delta = rowsum(dO * O)`` (..., T); outputs dK
    (..., S, D) and/or dV (..., S, E) as ``writes`` asks (``"key"``, ``"value"`` or
    ``"both"``: dV then dK)."""
    lay = _layout(q_shape, k_shape, v_shape, scale, causal, dtype)
    inputs = _gradient_inputs(lay, q_shape, k_shape, v_shape)
    shapes = {"key": [k_shape], "value": [v_shape], "both": [v_shape, k_shape]}

    def body(ins, outs):
        named = dict(zip(("value", "key") if writes == "both" else (writes,), outs))
        return _tasks(lay, lay.blocks(lay.keys), lambda at, blk: _key_task(
            lay, *ins, named.get("key"), named.get("value"), at, blk))

    outs = te.extern(shapes[writes], inputs, body, name="attention_key_grad",
                     dtype=[dtype] * len(shapes[writes]))
    return inputs, [outs] if isinstance(outs, te.Tensor) else list(outs)


def _key_task(lay: Layout, q, k, v, d_out, lse, deltas, dk, dv, at, blk) -> tirx.Stmt:
    """dK and dV of keys ``j0 .. j0 + lanes``, vectors across those keys; the query blocks
    that see them run in turn, ``rows`` queries of each block at a time."""
    n, dt = lay.lanes, lay.dtype
    rows = lay.lanes
    kt = local("kt", (lay.depth, n), dt)             # K^T of the block, times the scale
    vt = local("vt", (lay.value_depth, n), dt)       # V^T of the block
    dkt = local("dkt", (lay.depth, n), dt)
    dvt = local("dvt", (lay.value_depth, n), dt)
    p = local("p", (rows, n), dt)                    # P of (query, key)
    ds = local("ds", (rows, n), dt)                  # P * (dP - delta)
    lse_q = local("lse_q", (rows,), dt)
    delta = local("delta", (rows,), dt)
    j0 = blk * n
    scale, zero = const(lay.scale, dt), const(0, dt)
    init = seq(
        loop("d", lay.depth, lambda d: vector_loop("j", n, lambda j: seq(
            store(kt, k[(*at, lay.clamp_key(j0 + j), d)] * scale, [d, j]),
            store(dkt, zero, [d, j])))),
        loop("e", lay.value_depth, lambda e: vector_loop("j", n, lambda j: seq(
            store(vt, v[(*at, lay.clamp_key(j0 + j), e)], [e, j]),
            store(dvt, zero, [e, j])))))
    first_block = lay.first_query(j0) // rows

    def query_block(qb):
        i0 = qb * rows

        def qi(i):
            return lay.clamp_query(i0 + i)

        return seq(
            loop("i", rows, lambda i: seq(store(lse_q, lse[(*at, qi(i))], [i]),
                                          store(delta, deltas[(*at, qi(i))], [i]))),
            rows_of_vectors("i", rows, n, lambda i, j: store(
                p, tirx.Select(lay.visible(i0 + i, j0 + j), exp(unrolled_sum(
                    lambda d: q[(*at, qi(i), d)] * kt[d, j], lay.depth) - lse_q[i]), zero),
                [i, j])),
            rows_of_vectors("i", rows, n, lambda i, j: store(
                ds, p[i, j] * (unrolled_sum(lambda e: d_out[(*at, qi(i), e)] * vt[e, j],
                                            lay.value_depth) - delta[i]), [i, j])),
            rows_of_vectors("e", lay.value_depth, n, lambda e, j: store(
                dvt, dvt[e, j] + unrolled_sum(lambda i: p[i, j] * d_out[(*at, qi(i), e)],
                                              rows), [e, j])),
            rows_of_vectors("d", lay.depth, n, lambda d, j: store(
                dkt, dkt[d, j] + unrolled_sum(lambda i: ds[i, j] * q[(*at, qi(i), d)], rows),
                [d, j])))

    count = tirx.min(n, lay.keys - j0)
    finish = loop("j", count, lambda j: seq(
        *([] if dk is None else [loop("d", lay.depth, lambda d: store(
            dk, dkt[d, j] * scale, [*at, j0 + j, d]))]),
        *([] if dv is None else [loop("e", lay.value_depth, lambda e: store(
            dv, dvt[e, j], [*at, j0 + j, e]))])))
    blocks = lay.blocks(lay.queries)
    return allocate([kt, vt, dkt, dvt, p, ds, lse_q, delta], seq(
        init, loop("qb", blocks - first_block, query_block, start=first_block), finish))


def attention_query_gradient(q_shape: Shape, k_shape: Shape, v_shape: Shape, scale: float,
                             causal: bool, dtype: str):
    """Inputs Q, K, V, dO, L and delta; output dQ (..., T, D)."""
    lay = _layout(q_shape, k_shape, v_shape, scale, causal, dtype)
    inputs = _gradient_inputs(lay, q_shape, k_shape, v_shape)

    def body(ins, outs):
        return _tasks(lay, lay.blocks(lay.queries),
                      lambda at, blk: _query_task(lay, *ins, outs[0], at, blk))

    dq = te.extern([q_shape], inputs, body, name="attention_query_grad", dtype=[dtype])
    return inputs, [dq]


def _query_task(lay: Layout, q, k, v, d_out, lse, deltas, dq, at, blk) -> tirx.Stmt:
    """dQ of queries ``i0 .. i0 + lanes``, vectors across those queries, over the key
    blocks they see."""
    n, dt = lay.lanes, lay.dtype
    qt = local("qt", (lay.depth, n), dt)             # Q^T of the block, times the scale
    dot = local("dot", (lay.value_depth, n), dt)     # dO^T of the block
    dqt = local("dqt", (lay.depth, n), dt)
    ds = local("ds", (lay.key_block, n), dt)         # P, then P * (dP - delta)
    lse_q = local("lse_q", (n,), dt)
    delta = local("delta", (n,), dt)
    i0 = blk * n
    scale, zero = const(lay.scale, dt), const(0, dt)

    def qi(i):
        return lay.clamp_query(i0 + i)

    init = seq(
        loop("d", lay.depth, lambda d: vector_loop("i", n, lambda i: seq(
            store(qt, q[(*at, qi(i), d)] * scale, [d, i]), store(dqt, zero, [d, i])))),
        loop("e", lay.value_depth, lambda e: vector_loop("i", n, lambda i: store(
            dot, d_out[(*at, qi(i), e)], [e, i]))),
        loop("i", n, lambda i: seq(store(lse_q, lse[(*at, qi(i))], [i]),
                                   store(delta, deltas[(*at, qi(i))], [i]))))
    key_blocks = (lay.last_key(i0) + (lay.key_block - 1)) // lay.key_block

    def key_block(kb):
        j0 = kb * lay.key_block

        def kj(j):
            return lay.clamp_key(j0 + j)

        return seq(
            rows_of_vectors("j", lay.key_block, n, lambda j, i: store(
                ds, tirx.Select(lay.visible(i0 + i, j0 + j), exp(unrolled_sum(
                    lambda d: k[(*at, kj(j), d)] * qt[d, i], lay.depth) - lse_q[i]), zero),
                [j, i])),
            rows_of_vectors("j", lay.key_block, n, lambda j, i: store(
                ds, ds[j, i] * (unrolled_sum(lambda e: v[(*at, kj(j), e)] * dot[e, i],
                                             lay.value_depth) - delta[i]), [j, i])),
            rows_of_vectors("d", lay.depth, n, lambda d, i: store(
                dqt, dqt[d, i] + unrolled_sum(lambda j: ds[j, i] * k[(*at, kj(j), d)],
                                              lay.key_block), [d, i])))

    finish = loop("i", tirx.min(n, lay.queries - i0), lambda i: loop(
        "d", lay.depth, lambda d: store(dq, dqt[d, i] * scale, [*at, i0 + i, d])))
    return allocate([qt, dot, dqt, ds, lse_q, delta],
                    seq(init, loop("kb", key_blocks, key_block), finish))
