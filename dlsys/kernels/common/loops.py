"""Schedule helpers every kernel family shares: loop extents, vectorising a contiguous loop
in whole vectors, sharing a loop between cores, and the ``injective`` schedule that every
elementwise-shaped kernel (of any family) runs with.

Vector widths are read from this machine's CPU (``dlsys.kernels.cpu``), never assumed.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir

from dlsys.kernels import cpu

# Two vector registers of float32 per step (16 lanes on AVX2, 32 on AVX-512), so LLVM can
# interleave independent operations; read from this machine's CPU, never assumed.
VECTOR_LANES = 2 * cpu.host().lanes("float32")
# Below this many elements, waking the thread pool costs more than the work it shares.
PARALLEL_MIN_ELEMENTS = 1 << 14
# Vectors per iteration of a parallel elementwise loop, at most.
PARALLEL_CHUNK_VECTORS = 64

# The widest vector loop over a contiguous run (a plane, a row): several registers, so
# independent lanes hide the adds' latency; a longer run is split into vectors of a divisor.
PLANE_VECTOR_MAX = 64

ScheduleFn = Callable[[s_tir.Schedule], None]


def loop_extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type != 0 for iv in sch.get(block).iter_vars)


def split_loops(sch: s_tir.Schedule, block) -> tuple[list, list]:
    """``block``'s loops as (spatial, reduction), each in nest order."""
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    return ([lp for lp, t in zip(loops, kinds) if t == 0],
            [lp for lp, t in zip(loops, kinds) if t != 0])


def all_blocks(sch: s_tir.Schedule) -> list:
    return sch.get_child_blocks(sch.get_sblock("root"))


def vectorize_and_parallelize(sch: s_tir.Schedule, loop) -> None:
    """Split one (fused) loop into a parallel outer part and a vectorised inner part.

    Each parallel iteration runs a chunk of up to ``PARALLEL_CHUNK_VECTORS`` vectors: one
    vector per iteration ran a (256, 32, 28, 28) relu 3.6x slower on znver4 (7.0 against
    1.9 ms). Vectors are a divisor of the extent where one exists, so that no iteration
    needs a bounds test (a predicated vector loop is scalarised)."""
    extent = loop_extent(sch, loop)
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
    for block in all_blocks(sch):
        loops = sch.get_loops(block)
        if not loops:
            continue
        inner = _vector_axes(sch, block)
        if inner == len(loops) or len(loops) == 1:
            vectorize_and_parallelize(sch, sch.fuse(*loops) if len(loops) > 1 else loops[0])
            continue
        outer = sch.fuse(*loops[:-inner]) if len(loops) - inner > 1 else loops[0]
        row = sch.fuse(*loops[-inner:]) if inner > 1 else loops[-1]
        elements = loop_extent(sch, outer) * loop_extent(sch, row)
        vectorize_row(sch, row)
        if loop_extent(sch, outer) > 1 and elements >= PARALLEL_MIN_ELEMENTS:
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


def vectorize_row(sch: s_tir.Schedule, loop) -> None:
    """Vectorise a contiguous loop (a plane, an image row) whole or in whole vectors of a
    divisor of its extent, never with a predicated tail (which the vectoriser scalarises)."""
    extent = int(sch.get(loop).extent)
    width = vector_width(extent)
    if width < extent:
        _, loop = sch.split(loop, factors=[None, width])
    if width > 1:
        sch.vectorize(loop)


def vector_width(extent: int) -> int:
    """The whole plane when it fits ``PLANE_VECTOR_MAX``; else the widest divisor that is a
    whole number of registers, or failing that the widest divisor (no tail loop)."""
    if extent <= PLANE_VECTOR_MAX:
        return extent
    divisors = [d for d in range(PLANE_VECTOR_MAX, 0, -1) if extent % d == 0]
    whole = [d for d in divisors if d % cpu.host().lanes("float32") == 0]
    return (whole or divisors)[0]


