"""The loss family's schedules: row-wise kernels whose rows run in parallel, each row's
reductions (max, sum of ``exp``) kept in cache for the elementwise pass that reads them."""

from __future__ import annotations

from tvm import s_tir

from dlsys.kernels.common.loops import (
    PARALLEL_MIN_ELEMENTS,
    all_blocks,
    is_reduction,
    loop_extent,
)


def schedule_row_softmax(sch: s_tir.Schedule) -> None:
    """Row-wise kernels (softmax): row reductions stay in cache, rows run in parallel."""
    *producers, last = all_blocks(sch)
    _rows_in_parallel(sch, producers, last)


def schedule_row_loss(sch: s_tir.Schedule) -> None:
    """Row-wise reductions that end in a scalar mean over the rows (the loss): the row
    blocks share one parallel row loop, and the mean's total and scale run after it."""
    blocks = all_blocks(sch)
    last = sch.get_sblock("row_loss")
    producers = blocks[:[sch.get(b).name_hint for b in blocks].index("row_loss")]
    _rows_in_parallel(sch, producers, last)


def _rows_in_parallel(sch: s_tir.Schedule, producers: list, last) -> None:
    row_loop = sch.get_loops(last)[0]
    for block in reversed(producers):
        sch.compute_at(block, row_loop)
    if len(sch.get_loops(last)) > 1 and not is_reduction(sch, last):
        sch.vectorize(sch.get_loops(last)[-1])
    if loop_extent(sch, row_loop) > 1:
        sch.parallel(row_loop)


def schedule_row_blocks(sch: s_tir.Schedule) -> None:
    """Several row-wise blocks sharing row reductions (the loss fused with its gradient).

    A shared producer cannot move under one consumer's row loop, so each block keeps its own
    loop nest: rows in parallel where there are enough, elementwise columns vectorised.
    """
    for block in all_blocks(sch):
        loops = sch.get_loops(block)
        if not is_reduction(sch, block) and len(loops) > 1:
            sch.vectorize(loops[-1])
        first_is_row = sch.get(block).iter_vars[0].iter_type == 0
        rows = loop_extent(sch, loops[0])
        cells = rows * (loop_extent(sch, loops[-1]) if len(loops) > 1 else 1)
        if first_is_row and rows > 1 and cells >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(loops[0])
