"""Depthwise convolution: each image channel convolved with its own single filter (a grouped
convolution with one channel per group, MobileNet's and EfficientNet's 3x3 and 5x5 layers),
its compute and its CPU schedule side by side.

A depthwise layer does ``kh * kw`` multiply-adds per output element, against ``C * kh * kw``
for a full convolution, so it is bound by memory, not arithmetic: the implicit GEMM's copy of
every window (``compute._implicit_gemm``) would cost more than the product. Here each
(image, channel) plane is padded once, in cache, and every output row is built from shifted
rows of it::

    parallel for (b, c) in N x C:
        pad = plane (b, c) with its zero border      # in L1/L2
        for tile of rows x vectors of the output:
            acc = 0                                  # rows * vectors registers
            for ry, rx in taps: acc += F[c, ry, rx] (broadcast) * pad[row + ry, col + rx]
            Y[b, c, rows, cols] = epilogue(acc)      # clipped to the real columns

Output rows are padded to whole vectors (lanes along a row), so the tap loop never tests
bounds; the extra columns read zeros of the padded plane and are never stored. Where that
wastes most lanes (7 x 7 planes: 7 of 16 used) or the stride makes a row's loads strided,
the plane is instead split by the stride into phase planes and the output computed on a
*wide grid* that runs on from one row into the next (``_depthwise_wide``): each tap is then
one contiguous vector load at a constant offset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import s_tir, te, tirx

from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.common.loops import all_blocks
from dlsys.kernels.conv.compute import embed
from dlsys.kernels.conv.schedule import fold_epilogue, vectorize_innermost

Pair = tuple[int, int]
DEPTHWISE_BLOCK = "depthwise_rows"
DEPTHWISE_WIDE = "depthwise_wide"
DEPTHWISE_LONG = "depthwise_long_rows"
# Output rows reading more than this many vectors of the image go to ``_depthwise_long_rows``
# (measured on MobileNet v2, one thread: its 112 and 56 pixel planes 1.7-2.0x faster so at
# stride 1 or 2; its 28 pixel planes at stride 1, two vectors, 1.7x slower).
LONG_ROW_VECTORS = 2
# Output rows per padded copy of the rows they read (a divisor of the height, at most this):
# MobileNet's 112 and 56 pixel layers ran 1.2-1.6x faster with 4 than with 1 (each image row
# copied 1.5 or 1.25 times, not 3 or 1.5), 8 and 16 no faster (one thread).
LONG_ROWS_PER_PAD = 4
# Accumulator registers a tile may take: half the register file, the rest for the loaded rows
# and the broadcast taps (the direct convolution's rule, ``schedule.direct_tile``).
ACCUMULATOR_SHARE = 2


def depthwise_conv2d(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                     padding: Pair, dilation: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``Y[b, c] = X[b, c] * F[c, 0]``: NCHW images with (C, 1, kh, kw) filters."""
    return depthwise_conv2d_epilogue(shape_x, shape_f, shape_y, stride, padding, dilation, (),
                                     dtype)


def depthwise_conv2d_epilogue(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                              padding: Pair, dilation: Pair,
                              epilogue: Sequence[tuple[Epilogue, Callable]],
                              dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(depthwise_conv2d)`` in one kernel (a bias per channel, a ReLU6...); inputs
    are X, F, then each step's operand. ``padding`` pads the start of each axis; the end is
    padded with zeros as far as ``shape_y``'s windows reach."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    kh, kw = shape_f[2:]
    (sh, sw), (dh, dw) = stride, dilation
    out_h, out_w = shape_y[2:]
    if _long_rows(shape_y, stride, dtype):
        y = _depthwise_long_rows(x, f, shape_y, stride, padding, dilation)
        operands, out = apply_epilogue(y, epilogue, dtype)
        return [x, f, *operands], [out]
    grid = _wide_grid(shape_f, shape_y, stride, dilation, dtype)
    if grid is not None:
        y = _depthwise_wide(x, f, shape_y, stride, padding, dilation, grid)
        operands, out = apply_epilogue(y, epilogue, dtype)
        return [x, f, *operands], [out]
    width = _padded_width(out_w, dtype)
    size = (max(shape_x[2] + padding[0], (out_h - 1) * sh + (kh - 1) * dh + 1),
            max(shape_x[3] + padding[1], (width - 1) * sw + (kw - 1) * dw + 1))
    xp = embed(x, padding, size, 0.0)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rows = te.compute(
        (shape_y[0], shape_y[1], out_h, width),
        lambda b, c, i, j: te.sum(xp[b, c, i * sh + ry * dh, j * sw + rx * dw] * f[c, 0, ry, rx],
                                  axis=[ry, rx]), name=DEPTHWISE_BLOCK)
    y = te.compute(shape_y, lambda b, c, i, j: rows[b, c, i, j], name="depthwise_conv2d")
    operands, out = apply_epilogue(y, epilogue, dtype)
    return [x, f, *operands], [out]


def _wide_grid(shape_f: Shape, shape_y: Shape, stride: Pair, dilation: Pair,
               dtype: str) -> tuple[int, int] | None:
    """``(width, positions)`` of the wide grid (``_depthwise_wide``) where it takes fewer
    vectors than whole vectors per output row (7 x 7 planes: 4 against 7), or, at a stride
    above 1, no more where an output row is at most one vector (its loads are contiguous,
    the rows' strided: 1.4-1.6x faster on MobileNet's 28 and 14 pixel planes; on larger
    ones the copy into phase planes cost more than it saved); None elsewhere."""
    lanes = cpu_facts.host().lanes(dtype)
    out_h, out_w = shape_y[2:]
    width = out_w + (int(shape_f[3]) - 1) * dilation[1] // stride[1]
    positions = -(-(out_h * width) // lanes) * lanes
    per_row = out_h * _padded_width(out_w, dtype)
    if stride[1] > 1:
        if out_w <= lanes and positions <= per_row:
            return width, positions
    elif positions < per_row:
        return width, positions
    return None


def _depthwise_wide(x: te.Tensor, f: te.Tensor, shape_y: Shape, stride: Pair, padding: Pair,
                    dilation: Pair, grid: tuple[int, int]) -> te.Tensor:
    """The depthwise convolution on a wide grid: each plane padded and split by the stride
    into phase planes (``phases[b, c, p, r, s]`` is the padded plane's element ``(r * sh +
    p // sw, s * sw + p % sw)``) of ``width`` columns, and output ``(i, j)`` computed at
    ``q = i * width + j`` over all ``q`` below ``positions``: a tap then reads its phase
    plane, flattened, at ``q`` plus a constant, so every vector of the grid loads
    contiguous elements whatever the stride. The columns from ``out_w`` to ``width`` are
    computed and never stored."""
    n, channels, height_x, width_x = (int(d) for d in x.shape)
    kh, kw = (int(d) for d in f.shape[2:])
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding
    width, positions = grid
    lanes = cpu_facts.host().lanes(str(x.dtype))

    def tap(ry, rx):
        """A tap's phase plane and its offset in the plane, flattened."""
        return ((ry * dh) % sh) * sw + (rx * dw) % sw, (ry * dh) // sh * width + (rx * dw) // sw

    reach = max(tap(ry, rx)[1] for ry in range(kh) for rx in range(kw)) + positions
    rows = -(-reach // width)

    def phase_plane(b, c, p, r, s):
        i, j = r * sh + p // sw - ph, s * sw + p % sw - pw
        inside = tirx.all(i >= 0, i < height_x, j >= 0, j < width_x)
        return tirx.if_then_else(inside, x[b, c, i, j], tirx.const(0, x.dtype))

    phases = te.compute((n, channels, sh * sw, rows, width), phase_plane, name="pad")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def grid_sum(b, c, vector, lane):
        plane, offset = tap(ry, rx)
        q = vector * lanes + lane + offset
        return te.sum(phases[b, c, plane, q // width, q % width] * f[c, 0, ry, rx],
                      axis=[ry, rx])

    # The grid as (vector, lane): the output's reads then cover whole vectors of it (a flat
    # grid computed where the output is copied would shrink to the positions stored, and
    # its last vector to a masked one).
    wide = te.compute((n, channels, positions // lanes, lanes), grid_sum, name=DEPTHWISE_WIDE)

    def stored(b, c, i, j):
        q = i * width + j
        return wide[b, c, q // lanes, q % lanes]

    return te.compute(shape_y, stored, name="depthwise_conv2d")


def _long_rows(shape_y: Shape, stride: Pair, dtype: str) -> bool:
    """Whether an output row's windows span more than ``LONG_ROW_VECTORS`` vectors of the
    image (``_depthwise_long_rows``)."""
    return shape_y[3] * stride[1] > LONG_ROW_VECTORS * cpu_facts.host().lanes(dtype)


def _depthwise_long_rows(x: te.Tensor, f: te.Tensor, shape_y: Shape, stride: Pair,
                         padding: Pair, dilation: Pair) -> te.Tensor:
    """The depthwise convolution where an output row reads more than ``LONG_ROW_VECTORS``
    vectors of the image: each output the sum of its window's taps written out as one
    expression over the padded image (``DEPTHWISE_LONG``), which the schedule pads a few
    rows at a time and leaves to LLVM's loop vectoriser: a stride-2 row is then loaded as
    whole vectors and shuffled, not a lane at a time."""
    kh, kw = (int(d) for d in f.shape[2:])
    (sh, sw), (dh, dw) = stride, dilation
    out_h, out_w = shape_y[2:]
    size = (max(int(x.shape[2]) + padding[0], (out_h - 1) * sh + (kh - 1) * dh + 1),
            max(int(x.shape[3]) + padding[1], (out_w - 1) * sw + (kw - 1) * dw + 1))
    xp = embed(x, padding, size, 0.0)

    def window_sum(b, c, i, j):
        total = None
        for ry in range(kh):
            for rx in range(kw):
                term = xp[b, c, i * sh + ry * dh, j * sw + rx * dw] * f[c, 0, ry, rx]
                total = term if total is None else total + term
        return total

    sums = te.compute(shape_y, window_sum, name=DEPTHWISE_LONG)
    return te.compute(shape_y, lambda b, c, i, j: sums[b, c, i, j], name="depthwise_conv2d")


def _padded_width(out_w: int, dtype: str) -> int:
    lanes = cpu_facts.host().lanes(dtype)
    return -(-out_w // lanes) * lanes


def depthwise_tile(height: int, vectors: int, cpu: cpu_facts.CpuFacts | None = None
                   ) -> tuple[int, int]:
    """``(rows, vectors)`` of a register tile: as many accumulators as fit in the share of
    the register file, rows dividing the output height, vectors dividing a padded row. More
    vectors per row first: they share one broadcast tap and read adjacent memory."""
    registers = (cpu or cpu_facts.host()).vector_registers // ACCUMULATOR_SHARE
    best = (1, 1)
    for v in range(1, vectors + 1):
        for r in range(1, height + 1):
            if vectors % v or height % r or r * v > registers:
                continue
            if r * v > best[0] * best[1] or (r * v == best[0] * best[1] and v > best[1]):
                best = (r, v)
    return best


def schedule_depthwise(sch: s_tir.Schedule) -> None:
    """(image, channel) planes in parallel; per plane its padded copy, then register tiles
    of rows x vectors with the taps unrolled inside, and the clipped copy to the output (with
    any epilogue folded in)."""
    names = {sch.get(b).name_hint: b for b in all_blocks(sch)}
    if DEPTHWISE_LONG in names:
        _schedule_long_rows(sch, names[DEPTHWISE_LONG])
        return
    block = names.get(DEPTHWISE_BLOCK) or names[DEPTHWISE_WIDE]
    out = fold_epilogue(sch, block)
    producers = [p for p in sch.get_producers(block) if sch.get(p).name_hint == "pad"]
    # The planes are the product's own loops, the output copied after each: computed where
    # the output is, the product would shrink to the columns stored, its rows of whole
    # vectors to a predicated vector, which the CPU backend loads lane by lane.
    if sch.get(block).name_hint == DEPTHWISE_WIDE:
        # The wide grid's consumer reads whole vectors of it: computed where the output is.
        plane = sch.fuse(*sch.get_loops(out)[:2])
        sch.compute_at(block, plane, preserve_unit_loops=True)
    else:
        plane = sch.fuse(*sch.get_loops(block)[:2])
        sch.reverse_compute_at(out, plane, preserve_unit_loops=True)
    sch.parallel(plane)
    for pad in producers:
        sch.compute_at(pad, plane, preserve_unit_loops=True)
        if len(sch.get(pad).iter_vars) == 4:
            _copy_with_border(sch, pad)
        else:
            vectorize_innermost(sch, pad)  # phase planes: their copy is a gather anyway
    *_, row, column, ry, rx = sch.get_loops(block)
    dtype = str(sch.get(block).writes[0].source.dtype)
    lanes = cpu_facts.host().lanes(dtype)
    height, width = (int(sch.get(loop).extent) for loop in (row, column))
    rows, vectors = depthwise_tile(height, width // lanes)
    r_outer, r_inner = sch.split(row, factors=[None, rows])
    v_outer, v_inner, lane = sch.split(column, factors=[None, vectors, lanes])
    sch.reorder(r_outer, v_outer, ry, rx, r_inner, v_inner, lane)
    if sch.get(block).name_hint == DEPTHWISE_BLOCK:
        # The output (and its epilogue) written from the accumulators, clipped to its
        # columns: no pass through a padded copy of the plane.
        sch.set_scope(block, 0, "local")
        sch.reverse_compute_at(out, v_outer, preserve_unit_loops=True)
    else:
        write_back = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(write_back, v_outer, preserve_unit_loops=True)
        vectorize_innermost(sch, write_back)
    for loop in (ry, rx, r_inner, v_inner):
        sch.unroll(loop)
    sch.vectorize(lane)
    sch.decompose_reduction(block, ry)
    vectorize_innermost(sch, out)


def _schedule_long_rows(sch: s_tir.Schedule, sums) -> None:
    """``_depthwise_long_rows``: (image, channel) planes in parallel; per few output rows
    (``LONG_ROWS_PER_PAD``), the padded image rows their windows read (in L1), then each
    row's outputs, sums and epilogue in one loop that LLVM vectorises (TVM's vector loop
    would load stride-2 taps lane by lane). Padding each plane whole, in L2, cost a third
    more on MobileNet's first depthwise layer (112 pixels, stride 2)."""
    (pad,) = sch.get_producers(sums)
    out = fold_epilogue(sch, sums)
    sch.compute_inline(sums)
    image, channel, row, _ = sch.get_loops(out)
    plane = sch.fuse(image, channel)
    sch.parallel(plane)
    height = _extent(sch, row)
    together = max(r for r in range(1, LONG_ROWS_PER_PAD + 1) if height % r == 0)
    if together > 1:
        row, _ = sch.split(row, factors=[None, together])
    sch.compute_at(pad, row, preserve_unit_loops=True)
    _copy_with_border(sch, pad)


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _copy_with_border(sch: s_tir.Schedule, pad) -> None:
    """The padded plane as its zero fill, then the image's rows copied inside it with no
    test per element, where the copy's pattern allows (a plain border; TVM's vectorised
    loop with the test loaded each lane on its own), else as one guarded loop."""
    loops = sch.get_loops(pad)
    if sch.can_decompose_padding(pad, loops[-2]):
        fill = sch.decompose_padding(pad, loops[-2])
        vectorize_innermost(sch, fill)
    vectorize_innermost(sch, pad)
