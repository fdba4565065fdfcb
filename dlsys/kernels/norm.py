"""The schedule of the batch-normalisation kernels (``dlsys.kernels.compute_norm``): NCHW
tensors reduced per channel over (N, H, W), then, in most kinds, an elementwise pass that
reads each channel's statistics.

Everything runs in one parallel loop over groups of channels: a group's statistics are
computed once, in the iteration that uses them, and the group's slice of each input is read
again by the next statistic and by the output pass while it is still in the core's cache.
A group is as many channels as make each image's part of the slice a run of at least
``RUN_MIN`` contiguous values, which the hardware prefetchers follow (a 14 x 14 plane alone
is under a kilobyte, then a jump of the whole image). Each per-channel sum keeps partial
sums per plane position (``rfactor``), one vector lane each, accumulated over the batch,
then adds them up; an elementwise producer (``x_hat``) is inlined into its readers, a
multiply-add cheaper than a pass over memory.
"""

from __future__ import annotations

from tvm import s_tir

from dlsys.kernels import cpu

# The widest vector loop over a plane's positions (several registers, so independent lanes
# hide the adds' latency); a plane longer than this is split into vectors of a divisor.
PLANE_VECTOR_MAX = 64
# Contiguous values per image that a group of channels reads in one run (2 KiB of float32).
RUN_MIN = 512


def schedule_channel_norm(sch: s_tir.Schedule) -> None:
    """Per-channel statistics of NCHW tensors and the elementwise pass that uses them."""
    root = sch.get_sblock("root")
    if _is_reduction(sch, sch.get_child_blocks(root)[-1]):
        # A statistic that is itself the output (a parameter's gradient) gets a copy to the
        # output, so that every reduction is a producer split into partial sums below.
        sch.cache_write(sch.get_child_blocks(root)[-1], 0, "global")
    *producers, last = sch.get_child_blocks(root)
    plane = _plane(sch, producers + [last])
    group, group_size = _group_loop(sch, last, plane)
    partials = []
    for block in reversed(producers):
        if _is_reduction(sch, block):
            _, _, rh, rw = sch.get_loops(block)
            partial = sch.rfactor(sch.fuse(rh, rw), factor_axis=1)   # [c, hw], over n
            sch.compute_at(block, group)
            sch.compute_at(partial, group)
            partials.append(partial)
        elif len(sch.get(block).iter_vars) == 4:
            # x_hat, the affine before an activation, a fused epilogue's blocks
            # (compute.apply_epilogue): folded into the output loop, which alone writes.
            sch.compute_inline(block)
        else:
            sch.compute_at(block, group)
    # Before the partial sums' initialisation is split off, which parallel() would refuse.
    sch.parallel(group)
    for partial in partials:
        _vectorize_partials(sch, partial, group_size, plane[1])


def _vectorize_partials(sch: s_tir.Schedule, partial, group_size: int, size: int) -> None:
    """The images' loop outermost in the group, then channels, then the vectorised plane."""
    # compute_at made one loop per iterator of the block (rfactor's order: hw, c, n), each
    # but those of extent 1; all inside the group loop, outermost.
    images = int(sch.get(partial).iter_vars[2].dom.extent)
    named = [name for name, extent in (("hw", size), ("c", group_size), ("n", images))
             if extent > 1]
    loops = dict(zip(named, sch.get_loops(partial)[1:]))
    order = [loops[name] for name in ("n", "c", "hw") if name in loops]
    if len(order) > 1:
        sch.reorder(*order)
    if "hw" in loops:
        vectorize_row(sch, loops["hw"])
    if order:
        sch.decompose_reduction(partial, order[0])


def _plane(sch: s_tir.Schedule, blocks: list) -> tuple[int, int]:
    """(channels, plane size) of the kernel's NCHW input, from its first reduction or the
    last block."""
    for block in blocks:
        loops = sch.get_loops(block)
        if len(loops) == 4:
            n, c, h, w = (int(sch.get(lp).extent) for lp in loops)
            return c, h * w
    raise ValueError("channel_norm: no NCHW block in the kernel")


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


def vectorize_row(sch: s_tir.Schedule, loop) -> None:
    """Vectorise a contiguous loop (a plane, an image row) whole or in whole vectors of a
    divisor of its extent, never with a predicated tail (which the vectoriser scalarises)."""
    extent = int(sch.get(loop).extent)
    width = _vector_width(extent)
    if width < extent:
        _, loop = sch.split(loop, factors=[None, width])
    if width > 1:
        sch.vectorize(loop)


def _vector_width(extent: int) -> int:
    """The whole plane when it fits ``PLANE_VECTOR_MAX``; else the widest divisor that is a
    whole number of registers, or failing that the widest divisor (no tail loop)."""
    if extent <= PLANE_VECTOR_MAX:
        return extent
    divisors = [d for d in range(PLANE_VECTOR_MAX, 0, -1) if extent % d == 0]
    whole = [d for d in divisors if d % cpu.host().lanes("float32") == 0]
    return (whole or divisors)[0]


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type != 0 for iv in sch.get(block).iter_vars)
