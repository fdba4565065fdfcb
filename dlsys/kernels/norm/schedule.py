"""The schedule of the batch-normalisation kernels (``dlsys.kernels.norm.compute``): NCHW
tensors reduced per channel over (N, H, W), then, in most kinds, an elementwise pass that
reads each channel's statistics.

Everything runs in one parallel loop over groups of channels: a group's statistics are
computed once, in the iteration that uses them, and the group's slice of each input is read
again by the next statistic and by the output pass while it is still in the core's cache.
A group is as many channels as make each image's part of the slice a run of at least
``RUN_MIN`` contiguous values, which the hardware prefetchers follow (a 7 x 7 plane alone
is 196 bytes, then a jump of the whole image), and few enough that the group's partial
sums fit in registers. Each per-channel sum keeps float32
partial sums per plane position, one vector lane each, accumulated over a block of images
(``compute.block_sums``), then adds them up in float64; an elementwise producer (``x_hat``)
is inlined into its readers, a multiply-add cheaper than a pass over memory.
"""

from __future__ import annotations

from tvm import s_tir

from dlsys.errors import ArgumentError
from dlsys.kernels.common.loops import vectorize_row

# Contiguous values per image that a group of channels reads in one run (784 bytes of
# float32). LLVM unrolls a group's loop and keeps the group's partial sums in vector
# registers: at 512 values (a 14 x 14 group of four channels, 64 AVX-512 registers of
# partials) they spilled, and the batch-norm kernels at (256, 64, 14, 14) ran 1.2-1.5x
# slower than with one channel a group (znver4, same process, alternating).
RUN_MIN = 196


def schedule_channel_norm(sch: s_tir.Schedule) -> None:
    """Per-channel statistics of NCHW tensors and the elementwise pass that uses them."""
    *producers, last = sch.get_child_blocks(sch.get_sblock("root"))
    plane = _plane(sch)
    group, group_size = _group_loop(sch, last, plane)
    partials, totals = [], []
    for block in reversed(producers):
        iter_vars = sch.get(block).iter_vars
        if len(iter_vars) == 4 and not _is_reduction(sch, block):
            # x_hat, the affine before an activation, a fused epilogue's blocks
            # (compute.apply_epilogue): folded into the output loop, which alone writes.
            sch.compute_inline(block)
            continue
        sch.compute_at(block, group)
        if _is_reduction(sch, block):
            # A statistic's float32 partials (b, c, plane position; over a block of images)
            # or their float64 total per channel (c; over b and the plane): compute_norm.
            spatial = sum(1 for iv in iter_vars if iv.iter_type == 0)
            (partials if spatial == 3 else totals).append(block)
    # Before the sums' initialisations are split off, which parallel() would refuse.
    sch.parallel(group)
    for partial in partials:
        _vectorize_partials(sch, partial, group_size)
    for total in totals:
        # compute_at made a loop per iterator but those of extent 1 (c, then b and the
        # plane): the first reduction loop is the one after the channels', if any is left.
        loops = sch.get_loops(total)[1:]
        first = 1 if group_size > 1 else 0
        if len(loops) > first:
            sch.decompose_reduction(total, loops[first])


def _vectorize_partials(sch: s_tir.Schedule, partial, group_size: int) -> None:
    """The partial sums' loops in the group: blocks of images, images, the group's channels,
    then its plane positions fused and vectorised, so each image's slice is one run."""
    # compute_at made one loop per iterator of the block (b, c, the plane position, then the
    # images of a block), each but those of extent 1; all inside the group loop, outermost.
    extents = [int(iv.dom.extent) for iv in sch.get(partial).iter_vars]
    extents[1] = group_size
    named = [name for name, extent in zip(("b", "c", "hw", "n"), extents) if extent > 1]
    loops = dict(zip(named, sch.get_loops(partial)[1:]))
    order = [loops[name] for name in ("b", "n", "c", "hw") if name in loops]
    if len(order) > 1:
        sch.reorder(*order)
    if "hw" in loops:
        vectorize_row(sch, loops["hw"])
    if order:
        # With one image (batch 1) the plane's loop is the only one, and vectorising may
        # have split it: the initialisation goes at the outermost loop now in its place.
        sch.decompose_reduction(partial, sch.get_loops(partial)[1])


def _plane(sch: s_tir.Schedule) -> tuple[int, int]:
    """(channels, plane size) of the kernel's NCHW input. Read from the input, not from the
    blocks: a kernel may have none that spans it (a running statistic with momentum 0 reads
    no batch statistic at all, and TE drops the unread blocks)."""
    func = sch.mod[sch.func_working_on]
    for param in func.params:
        if len(param.ty.shape) == 4:
            _, c, h, w = (int(d) for d in param.ty.shape)
            return c, h * w
    raise ArgumentError(f"channel_norm: kernel {sch.func_working_on.name_hint} has no NCHW "
                        f"input; its inputs are {[tuple(p.ty.shape) for p in func.params]}")


def _group_loop(sch: s_tir.Schedule, last, plane: tuple[int, int]) -> tuple:
    """The loop over channel groups, outermost around ``last``, and the channels in a group;
    an NCHW ``last`` then runs images, the group's channels and the vectorised plane inside
    it."""
    channels, size = plane
    group = next(g for g in range(1, channels + 1)
                 if channels % g == 0 and (g * size >= RUN_MIN or g == channels))
    loops = sch.get_loops(last)
    if len(loops) != 4:
        # One value per channel, shaped (C,), (C, 1, 1) or (1, C, 1, 1).
        loops = [sch.fuse(*loops)] if len(loops) > 1 else loops
    if len(loops) == 1:
        outer, _ = sch.split(loops[0], factors=[None, group])
        return outer, group
    n, c, h, w = loops
    outer, inner = sch.split(c, factors=[None, group])
    sch.reorder(outer, n, inner)
    vectorize_row(sch, sch.fuse(h, w))
    return outer, group


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type != 0 for iv in sch.get(block).iter_vars)
