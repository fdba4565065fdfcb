"""The resize family's CPU schedule for the adjoint (the forward is injective and runs with
the shared injective schedule)."""

from __future__ import annotations

from tvm import s_tir

from dlsys.kernels.common.loops import (
    PARALLEL_MIN_ELEMENTS,
    all_blocks,
    loop_extent,
    split_loops,
)


def schedule_resize_gradient(sch: s_tir.Schedule) -> None:
    """Each input element's sum over its window of output gradients stays one scalar loop
    nest (its loads are gathers, whose indices depend on the element); the elements are
    shared between cores, all the output axes fused into one parallel loop."""
    for block in all_blocks(sch):
        spatial, _ = split_loops(sch, block)
        if not spatial:
            continue
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        if loop_extent(sch, fused) >= PARALLEL_MIN_ELEMENTS // 16:
            sch.parallel(fused)
