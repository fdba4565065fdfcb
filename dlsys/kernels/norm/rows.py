"""Reductions along one axis of a tensor (a row of layer norm, of softmax) and the schedule of
the kernels built from them (``schedule_rows``).

A row's sum or max over its last axis is taken in two blocks: ``{name}_partial``, of shape
``(*rows, lanes)``, where lane ``l`` combines the elements ``l, l + lanes, l + 2 lanes...``
of its row, and ``{name}``, which combines the lanes pairwise. The schedule runs the
partial's lanes as one vector: the row is read in order, a vector at a time, and each
lane's running value sits in a register, where a single running value would wait on each
add's latency. Along another axis (softmax over a middle axis) the reduction is one plain
block.

``schedule_rows`` puts every row's reductions and its output in the same iteration of one
parallel loop, so each row is read from the cache while it is still there.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, te, tirx

from dlsys.kernels import cpu
from dlsys.kernels.common.compute import Shape
from dlsys.kernels.common.loops import (
    PARALLEL_MIN_ELEMENTS,
    all_blocks,
    is_reduction,
    loop_extent,
    vectorize_row,
)

# The name of every lane-partial block ends with it, so that the schedule finds them.
PARTIAL_SUFFIX = "_partial"
# An elementwise block whose name ends with it is computed a row at a time into a buffer
# (a value read by several blocks of the row, such as softmax's exponentials), not inlined
# into its readers.
ROW_SUFFIX = "_row"
# How a reduction's lanes are combined: its reducer as a binary operation.
COMBINE = {te.sum: lambda a, b: a + b, te.max: tirx.max}


def row_lanes(size: int, dtype: str) -> int:
    """The lanes of a partial along a row of ``size`` elements: the widest divisor of
    ``size`` up to two vector registers of ``dtype`` (a whole row when it is shorter), so
    that no lane needs a bounds test."""
    widest = 2 * cpu.host().lanes(dtype)
    return max(d for d in range(1, min(size, widest) + 1) if size % d == 0)


def reduce_along(term: Callable, shape: Shape, axis: int, reducer: Callable, name: str,
                 dtype: str, total_dtype: str | None = None) -> te.Tensor:
    """``reducer`` (``te.sum`` or ``te.max``) of ``term(*index)`` over ``axis`` of ``shape``,
    shaped ``shape`` without ``axis``. Along the last axis in two blocks (the lanes'
    partials, then their total); ``dtype`` is the type the partials are kept in (``term``'s
    own, which sets their width); ``total_dtype`` the one their total adds them in (a
    sum's accumulator: each lane's partial is then a short sum, the whole in float64)."""
    rank = len(shape)
    axis = axis % rank
    size = shape[axis]
    kept = shape[:axis] + shape[axis + 1:]
    if size == 1:
        # The element itself, not its max with the reduction's identity (-FLT_MAX, which
        # would make a row of one -inf a row with a finite max).
        return te.compute(kept, lambda *i: term(*i[:axis], 0, *i[axis:]), name=name)
    if axis != rank - 1:
        k = te.reduce_axis((0, size), name=f"{name}_k")
        return te.compute(kept, lambda *i: reducer(term(*i[:axis], k, *i[axis:]), axis=k),
                          name=name)
    lanes = row_lanes(size, dtype)
    k = te.reduce_axis((0, size // lanes), name=f"{name}_k")
    partial = te.compute((*kept, lanes), lambda *i: reducer(
        term(*i[:-1], k * lanes + i[-1]), axis=k), name=name + PARTIAL_SUFFIX)
    combine = COMBINE[reducer]

    def lane_tree(*i):
        # Pairwise, so that the lanes' total waits on log2(lanes) operations, not on lanes.
        terms = [partial[(*i, lane)] for lane in range(lanes)]
        if total_dtype is not None:
            terms = [t.astype(total_dtype) for t in terms]
        while len(terms) > 1:
            terms = [combine(*terms[k:k + 2]) if k + 1 < len(terms) else terms[k]
                     for k in range(0, len(terms), 2)]
        return terms[0]

    return te.compute(kept, lane_tree, name=name)


def schedule_rows(sch: s_tir.Schedule) -> None:
    """Kernels whose last block is computed row by row from reductions along one axis
    (``reduce_along``): the axes before it run as one parallel loop, and each iteration
    computes its reductions, then its output, vectorised along the innermost axis. The
    elementwise blocks of the output's shape (``x_hat``) are inlined into their readers."""
    *producers, last = all_blocks(sch)
    rank = len(sch.get_loops(last))
    kept = []
    for block in producers:
        if not is_reduction(sch, block) and len(sch.get(block).iter_vars) == rank \
                and not sch.get(block).name_hint.endswith(ROW_SUFFIX):
            sch.compute_inline(block)
        else:
            kept.append(block)
    axis = _reduced_axis(sch, last, kept)
    loops = sch.get_loops(last)
    if axis == 0 or rank < 2:
        return
    outer = sch.fuse(*loops[:axis]) if axis > 1 else loops[0]
    for block in reversed(kept):
        sch.compute_at(block, outer)
    rows = loop_extent(sch, outer)
    if rows > 1 and rows * loop_extent(sch, sch.get_loops(last)[-1]) >= PARALLEL_MIN_ELEMENTS:
        # Before the partials' initialisations are split off, which parallel() would refuse.
        sch.parallel(outer)
    for block in kept:
        name = sch.get(block).name_hint
        if name.endswith(PARTIAL_SUFFIX):
            _vectorize_lanes(sch, block)
        elif name.endswith(ROW_SUFFIX):
            vectorize_row(sch, sch.get_loops(block)[-1])
    vectorize_row(sch, sch.get_loops(last)[-1])


def _vectorize_lanes(sch: s_tir.Schedule, partial) -> None:
    """A partial's lanes innermost and vectorised, its reduction along the row around them."""
    loops = sch.get_loops(partial)[1:]  # inside the row loop: the lanes, then the reduction
    if len(loops) != 2:
        return  # one lane, or one element per lane: nothing to interleave
    lane, k = loops
    sch.reorder(k, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, k)


def _reduced_axis(sch: s_tir.Schedule, last, producers: list) -> int:
    """The axis of ``last`` along which its producers reduced: the one axis that ``last``
    leaves out where it reads a row statistic (a buffer one rank lower that a producer
    writes). The last axis when there is none."""
    stmt = sch.get(last)
    axes = [iv.var for iv in stmt.iter_vars]
    written = {w.source.name for block in producers for w in sch.get(block).writes}
    for region in stmt.reads:
        if region.source.name not in written or len(region.region) != len(axes) - 1:
            continue
        used = [v for r in region.region for v in tvm.tirx.analysis.undefined_vars(r.min)]
        missing = [d for d, a in enumerate(axes) if not any(a.same_as(u) for u in used)]
        if len(missing) == 1:
            return missing[0]
    return len(axes) - 1


def schedule_row_columns(sch: s_tir.Schedule) -> None:
    """Kernels that sum over the rows, per column, a term that reads row statistics (layer
    norm's ``gamma`` adjoint, block ``column_blocks``: ``block_sums`` of the rows): the
    statistics row by row in parallel loops, then the blocks of rows in parallel, each
    block's rows read in order and its columns as vectors, then the blocks' total per
    column."""
    for block in all_blocks(sch):
        if not is_reduction(sch, block) and len(sch.get(block).iter_vars) == 2:
            sch.compute_inline(block)  # the rows' view of X, read where it is used
    blocks = all_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    columns = names.index("column_blocks")
    partial = blocks[columns]
    # The statistics the column sums read (the mean, inv_std) each keep their own row loop,
    # in parallel; the blocks that only they read run inside it.
    row_loop = None
    for block in reversed(blocks[:columns]):
        readers = [sch.get(c).name_hint for c in sch.get_consumers(block)]
        if "column_blocks" in readers:
            row_loop = sch.get_loops(block)[0]
            if loop_extent(sch, row_loop) > 1:
                sch.parallel(row_loop)
            continue
        sch.compute_at(block, row_loop)
        if sch.get(block).name_hint.endswith(PARTIAL_SUFFIX):
            _vectorize_lanes(sch, block)
    b, column, r = sch.get_loops(partial)
    sch.reorder(b, r, column)
    vectorize_row(sch, column)
    if loop_extent(sch, b) > 1:
        sch.parallel(b)
    sch.decompose_reduction(partial, r)
    vectorize_row(sch, sch.get_loops(blocks[-1])[0])
