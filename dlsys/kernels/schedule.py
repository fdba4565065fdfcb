"""Applying schedules: *how* the compute definitions run.

A schedule is a function ``(sch: tvm.s_tir.Schedule) -> None`` that rewrites the loops of
one kernel's PrimFunc in place. ``SCHEDULES`` maps each schedule family name to its CPU
schedule, collected from the kernel families (``dlsys.kernels.families``);
``DLSYS_SCHEDULE=naive`` skips them all (TVM's default loop nest), so every optimisation can
be measured against the unscheduled kernel. GPU targets get a plain thread binding of every
block (``bind_gpu_threads``), whatever the mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import tvm
from tvm import s_tir

from dlsys.errors import ArgumentError
from dlsys.kernels.common.epilogue import EPILOGUE_PREFIX
from dlsys.kernels.common.loops import (
    PARALLEL_MIN_ELEMENTS,
    VECTOR_LANES,
    ScheduleFn,
    all_blocks,
    is_reduction,
    loop_extent,
    schedule_injective,
    vectorize_and_parallelize,
)
from dlsys.kernels.conv import schedule_conv_direct, schedule_conv_gemm, schedule_conv_weight
from dlsys.kernels.families import FAMILIES
from dlsys.kernels.norm import schedule_channel_norm
from dlsys.kernels.reduce import schedule_sum

# A window kernel's output row up to this long is one vector loop (LeNet's 28 and 10 columns);
# a longer one is split into whole vectors.
WINDOW_VECTOR_MAX = 64

def schedule_mode() -> str:
    """``"tuned"`` (the default) or ``"naive"``, from the environment variable DLSYS_SCHEDULE."""
    mode = os.environ.get("DLSYS_SCHEDULE", "tuned").strip().lower() or "tuned"
    if mode not in ("tuned", "naive"):
        raise ArgumentError(f"DLSYS_SCHEDULE must be 'tuned' or 'naive', got {mode!r}")
    return mode


def schedule_reduce_sum(sch: s_tir.Schedule) -> None:
    """Sums (``dlsys.kernels.reduce``); a sum over no axis is a copy, scheduled as one."""
    blocks = all_blocks(sch)
    if not is_reduction(sch, blocks[0]):
        return schedule_injective(sch)
    schedule_sum(sch, blocks)


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


def schedule_window(sch: s_tir.Schedule) -> None:
    """Sliding-window kernels (``dlsys.kernels.compute_conv``: pooling and its adjoints).
    Producer blocks (padding, a pooling window's argmax) run first, each on its own in
    parallel; the last block runs its outer output axes fused and in parallel, its
    reductions (if any) inside them and its innermost output axis (a row) vectorised, so
    that each vector lane accumulates one output element (no reduction across lanes) and a
    lane's image position is plain arithmetic, not a division of a fused index."""
    *producers, main = all_blocks(sch)
    while producers and not is_reduction(sch, producers[-1]) \
            and sch.get(main).name_hint.startswith(EPILOGUE_PREFIX):
        # A fused epilogue (compute.apply_epilogue): the elementwise kernel before it folds
        # into it, so the epilogue's result is the only array written.
        sch.compute_inline(producers.pop())
    for block in producers:
        _parallel_outer(sch, block, vector=not is_reduction(sch, block))
    _parallel_outer(sch, main, vector=True)


def _parallel_outer(sch: s_tir.Schedule, block, vector: bool) -> None:
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    spatial = [lp for lp, t in zip(loops, kinds) if t == 0]
    reduce = [lp for lp, t in zip(loops, kinds) if t != 0]
    if not reduce and not (vector and len(spatial) > 1):
        vectorize_and_parallelize(sch, sch.fuse(*spatial))
        return
    if not vector:
        sch.parallel(sch.fuse(*spatial))
        return
    *outer, inner = spatial
    inner_extent = loop_extent(sch, inner)
    if inner_extent > WINDOW_VECTOR_MAX:
        # A wide row: whole vectors in the innermost loop, the rest of the row outside.
        rows, inner = sch.split(inner, factors=[None, VECTOR_LANES])
        outer.append(rows)
    fused = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else None)
    sch.reorder(*([fused] if fused is not None else []), *reduce, inner)
    if fused is not None and loop_extent(sch, fused) > 1:
        sch.parallel(fused)
    if inner_extent > 1:
        sch.vectorize(inner)
    if reduce:
        sch.decompose_reduction(block, reduce[0])


_LOCAL: dict[str, ScheduleFn] = {
    "injective": schedule_injective,   # every elementwise-shaped kernel, of any family
    "reduce_sum": schedule_reduce_sum,
    "softmax": schedule_row_softmax,
    "row_loss": schedule_row_loss,
    "row_blocks": schedule_row_blocks,
    "window": schedule_window,
    "conv_gemm": schedule_conv_gemm,
    "conv_direct": schedule_conv_direct,
    "conv_weight": schedule_conv_weight,
    "channel_norm": schedule_channel_norm,
}


def _collect(tables: list[dict]) -> dict:
    collected: dict = {}
    for table in tables:
        for name in table:
            if name in collected:
                raise ArgumentError(f"schedule family {name!r} is defined twice")
        collected.update(table)
    return collected


SCHEDULES: dict[str, ScheduleFn] = _collect(
    [_LOCAL, *(family.SCHEDULES for family in FAMILIES)])
# What a family's schedule decides beyond the shapes (the matmul's tiles), by schedule family.
DECISIONS: dict[str, Callable[[s_tir.Schedule], str]] = _collect(
    [getattr(family, "DECISIONS", {}) for family in FAMILIES])


def schedule_decisions(mod: tvm.IRModule, kind: str, target: tvm.target.Target) -> str:
    """What the schedule of ``kind`` will decide for ``mod`` beyond its shapes, such as the
    matmul's tiles, which come from a tuning log that can change after a kernel was compiled.
    The disk cache keys kernels by it, so a kernel built with older tiles is not reused."""
    decide = DECISIONS.get(kind)
    if decide is None or target.kind.name != "llvm" or schedule_mode() == "naive":
        return ""
    sch = s_tir.Schedule(mod)
    sch.work_on(next(iter(mod.functions)).name_hint)
    return decide(sch)


# Threads per GPU block: a multiple of the warp size that leaves room for registers.
GPU_THREADS = 256


def bind_gpu_threads(sch: s_tir.Schedule) -> None:
    """Give each block one thread per output element: its spatial loops fused, split over
    ``blockIdx.x``/``threadIdx.x``; a reduction runs serially inside its thread.

    TVM's ``DefaultGPUSchedule`` does the same but, in TVM 0.27, rejects every function of
    more than one block ("Duplicated block name root"): softmax, its loss and any fused kernel.
    """
    for block in all_blocks(sch):
        loops = sch.get_loops(block)
        # te.compute nests its spatial axes outside its reduction axes, in iter_var order.
        spatial = [lp for lp, iv in zip(loops, sch.get(block).iter_vars) if iv.iter_type == 0]
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        threads = min(GPU_THREADS, loop_extent(sch, fused))
        outer, inner = sch.split(fused, factors=[None, threads])
        sch.bind(outer, "blockIdx.x")
        sch.bind(inner, "threadIdx.x")


def apply_schedule(mod: tvm.IRModule, kind: str, target: tvm.target.Target) -> tvm.IRModule:
    """Return ``mod`` scheduled for ``target`` with the schedule of ``kind`` (or naive)."""
    sch = s_tir.Schedule(mod)
    sch.work_on(next(iter(mod.functions)).name_hint)
    if target.kind.name == "cuda":
        # A GPU kernel cannot run with unbound loops, so even naive mode binds threads.
        bind_gpu_threads(sch)
        return sch.mod
    if schedule_mode() == "naive":
        return mod
    SCHEDULES[kind](sch)
    return sch.mod
