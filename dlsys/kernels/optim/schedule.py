"""The schedule of the clipped updates (``compute.sgd_update_clipped``,
``compute.adam_update_clipped``): each gradient's sum of squares as a float64 reduction cut
into vector lanes and, for a large gradient, chunks that run in parallel; every other block
elementwise, as the ``injective`` schedule runs the unclipped updates.

A sum of squares reads its gradient once, in memory order, each float32 vector converted
and squared into float64 lanes that LLVM keeps in registers (eight AVX-512 registers of
float64 per row of 64 terms on znver4); its float64 partials (chunks x lanes) are few enough
(at most ``CHUNKS_MAX * PLANE_VECTOR_MAX``) that adding them up after the parallel part costs
well under a microsecond.
"""

from __future__ import annotations

from tvm import s_tir

from dlsys.kernels.common.loops import (
    PARALLEL_MIN_ELEMENTS,
    all_blocks,
    is_reduction,
    loop_extent,
    vector_width,
    vectorize_and_parallelize,
)

# Chunks of one gradient's sum of squares that run in parallel, at most: a few per core of
# a small machine, whose partials stay cheap to add up serially.
CHUNKS_MAX = 8


def schedule_clipped_update(sch: s_tir.Schedule) -> None:
    """Sums of squares (reductions) first, then every elementwise block: fused, vectorised,
    shared between cores when large (the update blocks read their operands at the same
    index, and the per-step scalars at index 0)."""
    blocks = all_blocks(sch)
    for block in blocks:
        if is_reduction(sch, block):
            _sum_of_squares(sch, block)
    for block in blocks:
        if is_reduction(sch, block):
            continue
        loops = sch.get_loops(block)
        if loops:
            vectorize_and_parallelize(sch, sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _sum_of_squares(sch: s_tir.Schedule, block) -> None:
    """One gradient's sum (an output of shape (1,) over every axis of the gradient): its
    axes fused into one run of memory, the run cut into ``count`` chunks x ``rows`` x
    ``width`` lanes, one float64 partial per chunk and lane (``rfactor``)."""
    _, *reduce = sch.get_loops(block)
    if not reduce:
        return
    run = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    terms = loop_extent(sch, run)
    width = vector_width(terms)
    if width == 1 or terms < 2 * width:
        return  # a handful of terms, or an extent with no useful divisor: one serial sum
    count = 1
    if terms >= PARALLEL_MIN_ELEMENTS:
        rows = terms // width
        count = max(d for d in range(1, CHUNKS_MAX + 1) if rows % d == 0)
    chunks, rows_loop, lanes = sch.split(run, factors=[count, None, width])
    # The chunks beside the lanes, so that the two fuse into the partials' one axis.
    sch.reorder(rows_loop, chunks, lanes)
    partial = sch.rfactor(sch.fuse(chunks, lanes), factor_axis=0)
    # The partial block keeps the loop nest: the rows, then its output axis (chunks x lanes).
    rows_loop, fused = sch.get_loops(partial)[-2:]
    chunks, lanes = sch.split(fused, factors=[count, width])
    sch.reorder(chunks, rows_loop, lanes)
    sch.vectorize(lanes)
    if count > 1:
        sch.parallel(chunks)
    sch.decompose_reduction(partial, rows_loop)
