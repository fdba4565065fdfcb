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
from dlsys.kernels.common.loops import ScheduleFn, all_blocks, loop_extent, schedule_injective
from dlsys.kernels.families import FAMILIES


def schedule_mode() -> str:
    """``"tuned"`` (the default) or ``"naive"``, from the environment variable DLSYS_SCHEDULE."""
    mode = os.environ.get("DLSYS_SCHEDULE", "tuned").strip().lower() or "tuned"
    if mode not in ("tuned", "naive"):
        raise ArgumentError(f"DLSYS_SCHEDULE must be 'tuned' or 'naive', got {mode!r}")
    return mode


def _collect(tables: list[dict]) -> dict:
    collected: dict = {}
    for table in tables:
        for name in table:
            if name in collected:
                raise ArgumentError(f"schedule family {name!r} is defined twice")
        collected.update(table)
    return collected


def _as_written(sch: s_tir.Schedule) -> None:
    """For kernels that lay out their own loops (an extern block, which no schedule
    primitive can split) or are too small to gain from a schedule (one short sum)."""


SCHEDULES: dict[str, ScheduleFn] = _collect(
    # The injective schedule serves every elementwise-shaped kernel, of any family.
    [{"injective": schedule_injective, "as_written": _as_written},
     *(family.SCHEDULES for family in FAMILIES)])
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
