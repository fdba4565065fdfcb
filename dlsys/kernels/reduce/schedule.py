"""The schedule of the sums (``reduce.compute.reduce_sum``): a reduction block that
sums in float64 (``compute.ACCUMULATOR``) and a block that scales and rounds each sum.

Two layouts, told apart by the input's innermost axis:

- kept (the sum over rows of a matrix, a bias gradient): each vector lane sums one column,
  rows outermost, so every row is read as one contiguous run;
- reduced (a whole tensor, the rows of a matrix, an image's planes): the innermost run is
  summed into one float64 partial per vector lane (``rfactor``), the partials then added up;
  the rows run in parallel, or, when there are too few rows to share, the reduction is cut
  into chunks that do.

Every sum is thus a few thousand (or fewer) float64 partials of float32 terms: a float32
accumulator would stop growing at 2**24 and err by about 1e-4 relative at 10**7 terms.
"""

from __future__ import annotations

from tvm import s_tir

from dlsys.kernels.common.loops import (
    all_blocks,
    is_reduction,
    schedule_injective,
    split_loops,
    vector_width,
    vectorize_and_parallelize,
    vectorize_row,
)

# Fewer kept rows than this are not worth sharing between cores: the reduction itself is cut.
PARALLEL_ROWS_MIN = 16
# At most this many chunks of one reduction run in parallel (their partials are added last).
CHUNKS_MAX = 64
# Below this many terms, waking the thread pool costs more than the sum.
PARALLEL_MIN_TERMS = 1 << 14


def schedule_reduce_sum(sch: s_tir.Schedule) -> None:
    """Sums (``dlsys.kernels.reduce``); a sum over no axis is a copy, scheduled as one."""
    blocks = all_blocks(sch)
    if not is_reduction(sch, blocks[0]):
        return schedule_injective(sch)
    schedule_sum(sch, blocks)


def schedule_sum(sch: s_tir.Schedule, blocks: list) -> None:
    """Schedule a sum's blocks: ``[reduce_block,] reduce_sum, reduce_out``."""
    if len(blocks) == 3:
        _sum_columns(sch, *blocks)
        return
    block, out = blocks
    spatial, reduce = split_loops(sch, block)
    # The input's innermost axes are summed (compute.reduce_sum): the reduction loops
    # that stand for them are the innermost ones, one contiguous run of memory.
    run = _reduced_run(sch, block)
    inner = sch.fuse(*reduce[-run:]) if run > 1 else reduce[-1]
    reduce = reduce[:-run]
    rows = _product(sch, spatial)
    terms = rows * _product(sch, reduce + [inner])
    if rows >= PARALLEL_ROWS_MIN or terms < PARALLEL_MIN_TERMS:
        _sum_rows(sch, block, out, spatial, inner, terms >= PARALLEL_MIN_TERMS)
        return
    _sum_chunks(sch, block, out, reduce, inner)


def _reduced_run(sch: s_tir.Schedule, block) -> int:
    """How many of the input's innermost axes the block reduces."""
    stmt = sch.get(block)
    reduced = [iv.var for iv in stmt.iter_vars if iv.iter_type != 0]
    (region,) = [r for r in stmt.reads if r.source.name == "A"]
    run = 0
    for axis in reversed(region.region):
        if not any(axis.min.same_as(v) for v in reduced):
            break
        run += 1
    return run


def _sum_columns(sch: s_tir.Schedule, partial, block, out) -> None:
    """The innermost axis kept: vector lanes along it. For each block of rows, the lanes'
    float32 partial sums run over the rows in registers, then join the float64 totals."""
    (*outer, last), reduce = split_loops(sch, block)  # reduce: the other summed axes, blocks
    width = vector_width(_extent(sch, last))
    chunk, lanes = sch.split(last, factors=[None, width])
    outer = sch.fuse(*outer, chunk) if outer else chunk
    sch.reorder(outer, *reduce, lanes)
    sch.compute_at(partial, reduce[-1])
    # compute_at nests the partial's loops in its iterators' order, the lanes before the
    # rows (a loop of extent 1 gets none): the rows go outside, so each is read as one run.
    rows = sch.get_loops(partial)[1 + len(reduce):]
    if width > 1:
        lanes_loop, *rows = rows
        if rows:
            sch.reorder(*rows, lanes_loop)
        sch.vectorize(lanes_loop)
        sch.vectorize(lanes)
    if _extent(sch, outer) > 1 and _product(sch, [outer, lanes, *reduce, *rows]) \
            >= PARALLEL_MIN_TERMS:
        sch.parallel(outer)
    _round_under(sch, out, outer)
    if rows:
        sch.decompose_reduction(partial, rows[0])
    sch.decompose_reduction(block, reduce[0])


def _sum_rows(sch: s_tir.Schedule, block, out, spatial: list, inner, parallel: bool) -> None:
    """Kept rows in parallel; each row's innermost run summed into one partial per lane."""
    width = vector_width(_extent(sch, inner))
    partial = None
    if 1 < width < _extent(sch, inner):   # a run of one vector needs no partials
        _, lanes = sch.split(inner, factors=[None, width])
        partial = sch.rfactor(lanes, factor_axis=len(spatial))
        # The write-back now runs over the rows, then adds up the lanes.
        spatial = sch.get_loops(block)[:len(spatial)]
    rows = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if partial is not None:
        # Each row's partials computed inside its iteration: one row's worth, in registers,
        # not a buffer of every row's. compute_at nests the lanes (the partial block's first
        # iterator) outermost: they go back inside the reduction.
        sch.compute_at(partial, rows)
        lanes, *reduce = sch.get_loops(partial)[1:]
        sch.reorder(*reduce, lanes)
        sch.vectorize(lanes)
    if parallel and _extent(sch, rows) > 1:
        sch.parallel(rows)
    _round_under(sch, out, rows)
    if partial is not None:
        # After parallel() and reverse_compute_at, which refuse a split-off initialisation.
        sch.decompose_reduction(partial, reduce[0])


def _sum_chunks(sch: s_tir.Schedule, block, out, reduce: list, inner) -> None:
    """Too few rows to share: the outermost reduction loop is cut into chunks that run in
    parallel, each summing into one partial per vector lane; the partials are added last."""
    width = vector_width(_extent(sch, inner))
    factored = []
    if width > 1:
        inner, lanes = sch.split(inner, factors=[None, width])
        factored.append(lanes)
    first = reduce[0] if reduce else inner
    extent = _extent(sch, first)
    count = max(d for d in range(1, min(CHUNKS_MAX, extent) + 1) if extent % d == 0)
    if count > 1:
        chunks, rest = sch.split(first, factors=[count, None])
        between = [rest] if first is inner else [rest, *reduce[1:], inner]
        inner = between[-1]
        factored.insert(0, chunks)
        # Beside the lanes, so that the two fuse into the partials' one axis; the loops in
        # between keep their order, the run innermost.
        sch.reorder(*between, chunks)
    if not factored:
        return  # an odd run and no chunks: one float64 sum, in order
    fused = sch.fuse(*factored) if len(factored) > 1 else factored[0]
    partial = sch.rfactor(fused, factor_axis=len(sch.get(out).iter_vars))
    *loops, fused = sch.get_loops(partial)
    chunks, lanes = sch.split(fused, factors=[count, width])
    sch.reorder(chunks, *loops, lanes)   # the chunks outermost, each a task of its own
    if width > 1:
        sch.vectorize(lanes)
    if count > 1:
        sch.parallel(chunks)
    # The first reduction loop inside the chunks and the rows (the partial block's
    # iterators: chunks x lanes, the rows, then the reductions).
    spatial = sum(1 for iv in sch.get(partial).iter_vars if iv.iter_type == 0) - 1
    sch.decompose_reduction(partial, sch.get_loops(partial)[1 + spatial])


def _round_under(sch: s_tir.Schedule, out, loop) -> None:
    """The rounding block after the sums of ``loop``'s iteration, so each float64 sum is
    read while it is fresh and the float64 results never fill a buffer of their own."""
    sch.reverse_compute_at(out, loop)
    loops = sch.get_loops(out)
    if len(loops) > 1:   # ``loop`` is outermost; a loop inside it rounds a vector of sums
        vectorize_row(sch, loops[-1])


def _product(sch: s_tir.Schedule, loops: list) -> int:
    result = 1
    for loop in loops:
        result *= _extent(sch, loop)
    return result


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def schedule_each_block(sch: s_tir.Schedule) -> None:
    """Plain reductions (``modes.reduce_extreme``, ``arg_extreme``, LRN's windows): each
    block's output positions in one loop, shared between cores when the block has enough
    work; elementwise blocks as the injective schedule runs them. Their reductions are
    short or rare in models (a max over a few axes, an argmax at the output), so each term
    is read where the compute reads it."""
    for block in all_blocks(sch):
        spatial, _ = split_loops(sch, block)
        if not spatial:
            continue
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        terms = _product(sch, sch.get_loops(block))
        if not is_reduction(sch, block):
            vectorize_and_parallelize(sch, fused)
        elif _extent(sch, fused) > 1 and terms >= PARALLEL_MIN_TERMS:
            sch.parallel(fused)
