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
from dlsys.kernels.conv.compute import embed
from dlsys.kernels.conv.schedule import fold_epilogue, vectorize_innermost

Pair = tuple[int, int]
DEPTHWISE_BLOCK = "depthwise_rows"
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
    wide = te.compute((n, channels, positions // lanes, lanes), grid_sum, name=DEPTHWISE_BLOCK)

    def stored(b, c, i, j):
        q = i * width + j
        return wide[b, c, q // lanes, q % lanes]

    return te.compute(shape_y, stored, name="depthwise_conv2d")


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
    block = sch.get_sblock(DEPTHWISE_BLOCK)
    out = fold_epilogue(sch, block)
    producers = [p for p in sch.get_producers(block) if sch.get(p).name_hint == "pad"]
    plane = sch.fuse(*sch.get_loops(out)[:2])
    sch.parallel(plane)
    sch.compute_at(block, plane, preserve_unit_loops=True)
    for pad in producers:
        sch.compute_at(pad, plane, preserve_unit_loops=True)
        vectorize_innermost(sch, pad)
    *_, row, column, ry, rx = sch.get_loops(block)
    dtype = str(sch.get(block).writes[0].source.dtype)
    lanes = cpu_facts.host().lanes(dtype)
    height, width = (int(sch.get(loop).extent) for loop in (row, column))
    rows, vectors = depthwise_tile(height, width // lanes)
    r_outer, r_inner = sch.split(row, factors=[None, rows])
    v_outer, v_inner, lane = sch.split(column, factors=[None, vectors, lanes])
    sch.reorder(r_outer, v_outer, ry, rx, r_inner, v_inner, lane)
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, v_outer, preserve_unit_loops=True)
    for loop in (ry, rx, r_inner, v_inner):
        sch.unroll(loop)
    sch.vectorize(lane)
    sch.decompose_reduction(block, ry)
    vectorize_innermost(sch, write_back)
    vectorize_innermost(sch, out)
