"""Schedules: *how* the compute definitions of ``dlsys.kernels.compute`` run.

A schedule is a function ``(sch: tvm.s_tir.Schedule) -> None`` that rewrites the loops of
one kernel's PrimFunc in place. ``SCHEDULES`` maps each kernel kind to its CPU schedule;
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
from dlsys.kernels import cpu
from dlsys.kernels.compute import EPILOGUE_PREFIX
from dlsys.kernels.conv import schedule_conv_direct, schedule_conv_gemm, schedule_conv_weight
from dlsys.kernels.matmul import (
    choose_config,
    gemv_lanes,
    inline_epilogue,
    matmul_problem,
    schedule_matmul_prepacked,
    schedule_matmul_tuned,
)
from dlsys.kernels.norm import schedule_channel_norm, vectorize_row
from dlsys.kernels.reduce import schedule_sum

# Two vector registers of float32 per step (16 lanes on AVX2, 32 on AVX-512), so LLVM can
# interleave independent operations; read from this machine's CPU, never assumed.
VECTOR_LANES = 2 * cpu.host().lanes("float32")
# Below this many elements, waking the thread pool costs more than the work it shares.
PARALLEL_MIN_ELEMENTS = 1 << 14
# Vectors per iteration of a parallel elementwise loop, at most.
PARALLEL_CHUNK_VECTORS = 64
# A window kernel's output row up to this long is one vector loop (LeNet's 28 and 10 columns);
# a longer one is split into whole vectors.
WINDOW_VECTOR_MAX = 64

ScheduleFn = Callable[[s_tir.Schedule], None]


def schedule_mode() -> str:
    """``"tuned"`` (the default) or ``"naive"``, from the environment variable DLSYS_SCHEDULE."""
    mode = os.environ.get("DLSYS_SCHEDULE", "tuned").strip().lower() or "tuned"
    if mode not in ("tuned", "naive"):
        raise ArgumentError(f"DLSYS_SCHEDULE must be 'tuned' or 'naive', got {mode!r}")
    return mode


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type != 0 for iv in sch.get(block).iter_vars)


def vectorize_and_parallelize(sch: s_tir.Schedule, loop) -> None:
    """Split one (fused) loop into a parallel outer part and a vectorised inner part.

    Each parallel iteration runs a chunk of up to ``PARALLEL_CHUNK_VECTORS`` vectors: one
    vector per iteration ran a (256, 32, 28, 28) relu 3.6x slower on znver4 (7.0 against
    1.9 ms). Vectors are a divisor of the extent where one exists, so that no iteration
    needs a bounds test (a predicated vector loop is scalarised)."""
    extent = _extent(sch, loop)
    if extent < VECTOR_LANES:
        if extent > 1:
            sch.vectorize(loop)
        return
    lanes = next((w for w in range(VECTOR_LANES, 3, -1) if extent % w == 0), VECTOR_LANES)
    vectors = -(-extent // lanes)
    if extent < PARALLEL_MIN_ELEMENTS or extent % lanes:
        outer, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)
        if extent >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(outer)
        return
    chunk = max(d for d in range(1, PARALLEL_CHUNK_VECTORS + 1) if vectors % d == 0)
    outer, _, inner = sch.split(loop, factors=[None, chunk, lanes])
    sch.vectorize(inner)
    sch.parallel(outer)


def schedule_injective(sch: s_tir.Schedule) -> None:
    """Every block elementwise: fuse the whole nest, vectorise, and share it between cores.

    Where an operand is broadcast (a per-channel (C, 1, 1) tensor against NCHW), a fused
    index would make each lane divide it back into a channel: then only the trailing axes
    along which every operand is contiguous or constant are fused and vectorised, the rest
    fused and shared between cores.
    """
    for block in _all_blocks(sch):
        loops = sch.get_loops(block)
        if not loops:
            continue
        inner = _vector_axes(sch, block)
        if inner == len(loops) or len(loops) == 1:
            vectorize_and_parallelize(sch, sch.fuse(*loops) if len(loops) > 1 else loops[0])
            continue
        outer = sch.fuse(*loops[:-inner]) if len(loops) - inner > 1 else loops[0]
        row = sch.fuse(*loops[-inner:]) if inner > 1 else loops[-1]
        elements = _extent(sch, outer) * _extent(sch, row)
        vectorize_row(sch, row)
        if _extent(sch, outer) > 1 and elements >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(outer)


def _vector_axes(sch: s_tir.Schedule, block) -> int:
    """How many trailing axes of ``block`` each operand reads either as its own trailing axes
    in order (contiguous) or not at all (constant along them); at least 1."""
    stmt = sch.get(block)
    axes = [iv.var for iv in stmt.iter_vars]
    best = 1
    for count in range(2, len(axes) + 1):
        suffix = axes[-count:]
        for region in stmt.reads:
            indices = [r.min for r in region.region]
            used = [[any(v.same_as(s) for v in tvm.tirx.analysis.undefined_vars(index))
                     for s in suffix] for index in indices]
            if not any(any(u) for u in used):
                continue  # constant along the suffix
            contiguous = (len(indices) >= count
                          and all(i.same_as(s) for i, s in zip(indices[-count:], suffix))
                          and not any(any(u) for u in used[:-count]))
            if not contiguous:
                return best
        best = count
    return best


def schedule_reduce_sum(sch: s_tir.Schedule) -> None:
    """Sums (``dlsys.kernels.reduce``); a sum over no axis is a copy, scheduled as one."""
    blocks = _all_blocks(sch)
    if not _is_reduction(sch, blocks[0]):
        return schedule_injective(sch)
    schedule_sum(sch, blocks)


def schedule_row_softmax(sch: s_tir.Schedule) -> None:
    """Row-wise kernels (softmax): row reductions stay in cache, rows run in parallel."""
    *producers, last = _all_blocks(sch)
    _rows_in_parallel(sch, producers, last)


def schedule_row_loss(sch: s_tir.Schedule) -> None:
    """Row-wise reductions that end in a scalar mean over the rows (the loss): the row
    blocks share one parallel row loop, and the mean's total and scale run after it."""
    blocks = _all_blocks(sch)
    last = sch.get_sblock("row_loss")
    producers = blocks[:[sch.get(b).name_hint for b in blocks].index("row_loss")]
    _rows_in_parallel(sch, producers, last)


def _rows_in_parallel(sch: s_tir.Schedule, producers: list, last) -> None:
    row_loop = sch.get_loops(last)[0]
    for block in reversed(producers):
        sch.compute_at(block, row_loop)
    if len(sch.get_loops(last)) > 1 and not _is_reduction(sch, last):
        sch.vectorize(sch.get_loops(last)[-1])
    if _extent(sch, row_loop) > 1:
        sch.parallel(row_loop)


def schedule_row_blocks(sch: s_tir.Schedule) -> None:
    """Several row-wise blocks sharing row reductions (the loss fused with its gradient).

    A shared producer cannot move under one consumer's row loop, so each block keeps its own
    loop nest: rows in parallel where there are enough, elementwise columns vectorised.
    """
    for block in _all_blocks(sch):
        loops = sch.get_loops(block)
        if not _is_reduction(sch, block) and len(loops) > 1:
            sch.vectorize(loops[-1])
        first_is_row = sch.get(block).iter_vars[0].iter_type == 0
        rows = _extent(sch, loops[0])
        cells = rows * (_extent(sch, loops[-1]) if len(loops) > 1 else 1)
        if first_is_row and rows > 1 and cells >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(loops[0])


def schedule_matmul(sch: s_tir.Schedule) -> None:
    """Baseline register tiling for ``C[i, j] = sum_k A[i, k] B[k, j]``.

    Tiles of 4 rows by 16 columns are kept in registers across ``k``; the column tile is
    vectorised and the row tiles run in parallel. ``dlsys.kernels.matmul`` holds the tuned
    schedule that packs operands; this one is the fallback for any shape.
    """
    block = sch.get_sblock("matmul")
    epilogue = inline_epilogue(sch)
    if epilogue is not None:
        # The baseline keeps the epilogue as its own elementwise pass inside the kernel.
        vectorize_and_parallelize(sch, sch.fuse(*sch.get_loops(epilogue)))
    i, j, k = sch.get_loops(block)
    m, n = _extent(sch, i), _extent(sch, j)
    tile_i = 4 if m >= 4 else 1
    tile_j = VECTOR_LANES if n >= VECTOR_LANES else n
    io, ii = sch.split(i, factors=[None, tile_i])
    jo, ji = sch.split(j, factors=[None, tile_j])
    sch.reorder(io, jo, k, ii, ji)
    sch.vectorize(ji)
    sch.unroll(ii)
    if m * n >= PARALLEL_MIN_ELEMENTS // 4:
        sch.parallel(sch.fuse(io, jo))
    sch.decompose_reduction(block, k)


def schedule_matmul_packed(sch: s_tir.Schedule) -> None:
    """The tuned matmul of ``dlsys.kernels.matmul``; ``schedule_matmul`` where it cannot apply."""
    schedule_matmul_tuned(sch, fallback=schedule_matmul)


def schedule_decisions(mod: tvm.IRModule, kind: str, target: tvm.target.Target) -> str:
    """What the schedule of ``kind`` will decide for ``mod`` beyond its shapes: the matmul's
    tiles, which come from a tuning log that can change after a kernel was compiled. The
    disk cache keys kernels by it, so a kernel built with older tiles is not reused."""
    if kind != "matmul" or target.kind.name != "llvm" or schedule_mode() == "naive":
        return ""
    sch = s_tir.Schedule(mod)
    sch.work_on(next(iter(mod.functions)).name_hint)
    try:
        problem = matmul_problem(sch)
        return "gemv" if gemv_lanes(problem) is not None else repr(choose_config(problem))
    except (RuntimeError, ValueError):  # not a plain matmul: the fallback schedule applies
        return "fallback"


def schedule_window(sch: s_tir.Schedule) -> None:
    """Sliding-window kernels (``dlsys.kernels.compute_conv``: pooling and its adjoints).
    Producer blocks (padding, a pooling window's argmax) run first, each on its own in
    parallel; the last block runs its outer output axes fused and in parallel, its
    reductions (if any) inside them and its innermost output axis (a row) vectorised, so
    that each vector lane accumulates one output element (no reduction across lanes) and a
    lane's image position is plain arithmetic, not a division of a fused index."""
    *producers, main = _all_blocks(sch)
    while producers and not _is_reduction(sch, producers[-1]) \
            and sch.get(main).name_hint.startswith(EPILOGUE_PREFIX):
        # A fused epilogue (compute.apply_epilogue): the elementwise kernel before it folds
        # into it, so the epilogue's result is the only array written.
        sch.compute_inline(producers.pop())
    for block in producers:
        _parallel_outer(sch, block, vector=not _is_reduction(sch, block))
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
    inner_extent = _extent(sch, inner)
    if inner_extent > WINDOW_VECTOR_MAX:
        # A wide row: whole vectors in the innermost loop, the rest of the row outside.
        rows, inner = sch.split(inner, factors=[None, VECTOR_LANES])
        outer.append(rows)
    fused = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else None)
    sch.reorder(*([fused] if fused is not None else []), *reduce, inner)
    if fused is not None and _extent(sch, fused) > 1:
        sch.parallel(fused)
    if inner_extent > 1:
        sch.vectorize(inner)
    if reduce:
        sch.decompose_reduction(block, reduce[0])


def _all_blocks(sch: s_tir.Schedule) -> list:
    root = sch.get_sblock("root")
    return sch.get_child_blocks(root)


SCHEDULES: dict[str, ScheduleFn] = {
    "injective": schedule_injective,
    "reduce_sum": schedule_reduce_sum,
    "softmax": schedule_row_softmax,
    "row_loss": schedule_row_loss,
    "row_blocks": schedule_row_blocks,
    "matmul": schedule_matmul_packed,
    "matmul_prepacked": schedule_matmul_prepacked,
    "window": schedule_window,
    "conv_gemm": schedule_conv_gemm,
    "conv_direct": schedule_conv_direct,
    "conv_weight": schedule_conv_weight,
    "channel_norm": schedule_channel_norm,
}


# Threads per GPU block: a multiple of the warp size that leaves room for registers.
GPU_THREADS = 256


def bind_gpu_threads(sch: s_tir.Schedule) -> None:
    """Give each block one thread per output element: its spatial loops fused, split over
    ``blockIdx.x``/``threadIdx.x``; a reduction runs serially inside its thread.

    TVM's ``DefaultGPUSchedule`` does the same but, in TVM 0.27, rejects every function of
    more than one block ("Duplicated block name root"): softmax, its loss and any fused kernel.
    """
    for block in _all_blocks(sch):
        loops = sch.get_loops(block)
        # te.compute nests its spatial axes outside its reduction axes, in iter_var order.
        spatial = [lp for lp, iv in zip(loops, sch.get(block).iter_vars) if iv.iter_type == 0]
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        threads = min(GPU_THREADS, _extent(sch, fused))
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
