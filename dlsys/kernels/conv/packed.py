"""Forward convolutions with constant filters packed once into channel panels (inference),
vectorised along output channels rather than positions.

The implicit GEMM of ``compute.py`` runs vector lanes along output positions, padded to
whole vectors: on the small planes of a CNN's last stages (7 x 7 = 49 positions padded to
64, 14 x 14 = 196 to 208) that adds 6 to 31 % of padded work, where the channels (64 to
512) are whole vectors. Here the filters are laid out once, when an inference
session first runs, as panels ``Fp[o // L, k, o % L]`` of ``L`` output channels
(``pack_filters``), ``k`` running over (channel, filter row, filter column), and the product
per image is::

    parallel for b in N:                 # or, with fewer images than cores, over panels
        pad[b], col[b, t, k, r] = windows of positions t*R + r   # of channels and tiles
        for o_panel in O / L:
            for t in positions / R:
                acc[R, L] = 0                            # R x V vectors in registers
                for k in K: acc[r, :] += col[b, t, k, r] (broadcast) * Fp[o_panel, k, :]
                Y[b, o_panel*L:, t*R:] = epilogue(acc)   # clipped to real channels, positions

``R`` positions need no padding to vectors (only to whole tiles, which ``packed_tiles``
picks to divide the positions where it can), and each ``k`` costs ``R`` broadcasts and
``V = L / lanes`` vector loads for ``R * V`` FMAs. Splitting ``K`` into blocks (so that
a block of the panel stays in L1), or running each panel over every image's positions
(so that it stays in L2), measured no faster on znver4: the product runs at about 0.9x
PyTorch's speed on ResNet-18's 7 x 7 layers either way.

Where the tile is whole output rows or a part of one (``PackedTile.in_place``), its windows
are read from the padded image where they lie, ``image[b, c, i*sh + ry, j*sw + rx]`` with
``j`` running over the tile's columns: no ``col`` copy, and no division of a flat position.
LeNet-5's second layer (16 channels, one panel) ran 2.7x faster so than with its windows
copied (25 positions a tile) and 1.3-1.6x faster than the implicit GEMM; ResNet-18's 7 x 7
and 14 x 14 layers and MobileNet v2's pointwise ones there 1.03-1.35x (one thread, znver4;
ResNet's 28 x 28 and 56 x 56 ones ran as fast as the implicit GEMM's row panels). With fewer
images than cores the tiles run in parallel too, where there is enough work
(``PARALLEL_MIN_WORK``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tvm import s_tir, te, tirx

from dlsys.errors import ShapeError
from dlsys.kernels import available_cpus
from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.conv.compute import embed
from dlsys.kernels.conv.schedule import fold_epilogue, gemm_tile, row_panel, vectorize_innermost

Pair = tuple[int, int]

PACKED_BLOCK = "conv_prepacked"
PACKED_COL = "col_tiles"
# The block annotation carrying the register tile ``(R, V, lanes)`` to the schedule.
PACKED_TILES_ATTR = "dlsys_conv_tiles"
# How much less work this kernel must do than the implicit GEMM to be chosen, counting
# multiply-adds of padded channels and positions, and one vector of them per output for
# the transposed write-back (a scalar store per element, where the implicit GEMM stores
# vectors): measured on znver4 (one thread, batch 8, ResNet-18's and MobileNet v2's
# layers), 7 x 7 planes (49 positions, 64 there) ran 1.25-1.35x faster; 14 x 14 ones (196
# positions, 208 there) 1.07x faster with 2304 taps but as fast with 384-576 (estimated
# 1.02-1.03x less work) and 1.06-1.12x slower with 64-96; 28 x 28 (no padding there) 1.03x
# slower.
PACKED_MIN_GAIN = 1.04
# Multiply-adds that copying one element of the windows costs, counted against the implicit
# GEMM where a tile reading them in place is compared with it: fits LeNet-5's second layer
# (16 channels, 150 taps, 10 x 10 positions: 1.6x faster in place, at 1.01x less product)
# and ResNet-18's 7 x 7 and 14 x 14 layers (1.29x and 1.08x), and ``compute``'s pointwise
# measurement (a copy a third of the product with 24 channels out).
WINDOW_COPY_COST = 8
# The same where the implicit GEMM copies its windows a few whole rows at a time, each tap's
# row a vector copy (``schedule.row_panel``): fits ResNet-18's 28 x 28 and 56 x 56 layers,
# which ran as fast in place as so (0.98-0.99x; 1.03-1.08x faster than the copy before it).
WINDOW_ROW_COPY_COST = 2
# Accumulators of an in-place tile, as a share of the registers: LeNet-5's second layer ran
# 1.2x slower with 20 than with 10 positions (batch 256; 1.6x at batch 1), and a 14 x 14
# plane's 14 positions x 2 vectors spilled registers to the stack (79 spills in its assembly,
# 1.3-3x slower than the implicit GEMM) where 7 x 2 had none.
IN_PLACE_MOST = 0.5
# Multiply-adds (padded) below which a convolution of fewer images than cores runs on one
# thread: LeNet-5's second layer at batch 1 (240 K) took 3.6 us on two threads and 4.9 us on
# one, but its session ran 3-4 us slower with it parallel while another process kept the
# second core busy (and as fast when it was idle).
PARALLEL_MIN_WORK = 4_000_000


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class PackedTile:
    """``positions`` output positions by ``vectors`` vectors of ``lanes`` output channels;
    the filters' panels are ``vectors * lanes`` channels wide. ``in_place``: the positions
    are whole output rows or a part of one (``whole_rows``), their windows read from the
    image where they lie rather than copied first."""

    positions: int
    vectors: int
    lanes: int
    in_place: bool = False

    @property
    def panel(self) -> int:
        return self.vectors * self.lanes


def packed_tiles(shape_f: Shape, shape_y: Shape, dtype: str,
                 cpu: cpu_facts.CpuFacts | None = None, *, stride: Pair = (1, 1),
                 padding: Pair = (0, 0)) -> PackedTile | None:
    """The register tile of the channel-vectorised kernel for these filters and output, or
    None where the position-vectorised implicit GEMM (``schedule.gemm_tile``) is expected
    to run as fast (``PACKED_MIN_GAIN``). A tile of whole output rows, or of a part of one,
    reading the image in place (``whole_rows``), comes first where it pays."""
    cpu = cpu or cpu_facts.host()
    lanes = cpu.lanes(dtype)
    channels, positions = shape_f[0], shape_y[2] * shape_y[3]
    taps = shape_f[1] * shape_f[2] * shape_f[3]
    # Two vectors of channels where they fill whole panels, else one (fewer padded).
    vectors = 2 if channels % (2 * lanes) == 0 else 1
    gemm = gemm_tile(channels, positions, dtype, cpu)
    gemm_positions = _round_up(positions, gemm.columns)
    position_work = channels * gemm_positions * taps
    image_windows = (tuple(shape_f[2:]) == (1, 1) and tuple(stride) == (1, 1)
                     and tuple(padding) == (0, 0))
    in_place = _in_place_tile(shape_y[2], shape_y[3], vectors, lanes, cpu, image_windows)
    if in_place is not None:
        rows_per_tile = max(1, in_place.positions // shape_y[3])
        padded = _round_up(shape_y[2], rows_per_tile) * shape_y[3]
        # The implicit GEMM copies its windows, but for a pointwise convolution over whole
        # tiles (``compute.grouped_conv2d_epilogue``); this tile reads them in place.
        pointwise = image_windows and gemm_positions == positions
        per_element = (WINDOW_ROW_COPY_COST if row_panel(taps, shape_y[2], shape_y[3],
                                                         gemm.columns, dtype, cpu)
                       else WINDOW_COPY_COST)
        copy = 0 if pointwise else per_element * taps * gemm_positions
        in_place_work = _round_up(channels, in_place.panel) * padded * (taps + lanes)
        if position_work + copy >= PACKED_MIN_GAIN * in_place_work:
            return in_place
    # As many positions as registers allow beside the V loaded filter vectors and one
    # broadcast, fewest padded positions first.
    most = (cpu.vector_registers - vectors - 1) // vectors
    rows = min(range(max(1, most // 2), most + 1),
               key=lambda r: (_round_up(positions, r), -r))
    tile = PackedTile(rows, vectors, lanes)
    channel_work = (_round_up(channels, tile.panel) * _round_up(positions, rows)
                    * (taps + lanes))
    return tile if position_work >= PACKED_MIN_GAIN * channel_work else None


def _in_place_tile(out_h: int, out_w: int, vectors: int, lanes: int,
                   cpu: cpu_facts.CpuFacts, image_windows: bool = False) -> PackedTile | None:
    """The largest tile of whole output rows or of a part of one with fewest padded rows,
    between a quarter and a half of the registers in accumulators (``IN_PLACE_MOST``), or
    None where no such tile exists (a long prime row, say). ``image_windows``: the windows
    are the image itself (a pointwise convolution, stride 1, unpadded), whose tile within
    one row may take every register but the loaded filter vectors and a broadcast: MobileNet
    v2's pointwise layers on 14 x 14 pixels ran 1.05-1.2x faster with 14 positions x 2
    vectors than with 7, its 28 x 28 ones as fast (0.96-1.1x; one and two threads, znver4);
    on 7 x 7 pixels two rows of 7 ran 1.1-1.2x slower than one."""
    registers = cpu.vector_registers

    def fits(r: int) -> bool:
        if image_windows and out_w % r == 0 and r * vectors + vectors + 1 <= registers:
            return registers // 4 <= r * vectors
        return registers // 4 <= r * vectors <= IN_PLACE_MOST * registers

    fitting = [r for r in range(1, registers + 1) if whole_rows(r, out_w) and fits(r)]
    if not fitting:
        return None
    rows = min(fitting, key=lambda r: (_round_up(out_h, max(1, r // out_w)), -r))
    return PackedTile(rows, vectors, lanes, in_place=True)


def pack_filters(shape_f: Shape, panel: int, dtype: str) -> tuple[TensorList, TensorList]:
    """OIHW filters as panels ``P[q, k, l] = F[q * panel + l, k]`` of ``panel`` output
    channels, ``k`` the flat (channel, row, column) index, the last panel zero-filled."""
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    channels, per_channel, kh, kw = shape_f
    taps = kh * kw

    def body(q, k, lane):
        o = q * panel + lane
        c, tap = k // taps, k % taps
        value = f[o, c, tap // kw, tap % kw]
        # if_then_else, not select: a channel past the last must not even be read.
        return value if channels % panel == 0 else tirx.if_then_else(
            o < channels, value, tirx.const(0, dtype))

    panels = -(-channels // panel)
    return [f], [te.compute((panels, per_channel * taps, panel), body, name="pack_filters")]


def whole_rows(rows: int, out_width: int) -> bool:
    """Whether a register tile of ``rows`` positions is whole output rows or divides one, so
    that its windows are read from the (padded) image in place, by affine indices."""
    return rows % out_width == 0 or out_width % rows == 0


def conv2d_prepacked(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                     padding: Pair, tiles: tuple, epilogue: Sequence[tuple[Epilogue, Callable]],
                     dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(X * F)`` (an ungrouped, undilated convolution) with F already packed by
    ``pack_filters`` into panels of ``tiles[1] * tiles[2]`` channels; ``tiles`` is
    ``(positions, vectors, lanes, in_place)`` of the register tile (``PackedTile``). Inputs
    are X, the panels, then each epilogue step's operand. An in-place tile reads the padded
    image where it lies; any other copies each tile's windows first."""
    rows, vectors, lanes = (int(t) for t in tiles[:3])
    in_place = bool(tiles[3])
    panel = vectors * lanes
    n, in_channels, height, width = shape_x
    out_channels, _, kh, kw = shape_f
    out_h, out_w = shape_y[2:]
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    packed = te.placeholder((-(-out_channels // panel), in_channels * kh * kw, panel),
                            dtype=dtype, name="F_packed")
    if in_place and not whole_rows(rows, out_w):
        raise ShapeError(f"conv2d_prepacked: a tile of {rows} positions is neither whole "
                         f"output rows of {out_w} nor a part of one; it cannot read its "
                         f"windows in place")
    make = _in_place_product if in_place else _windows_product
    gemm = make(x, packed, (kh, kw), (out_h, out_w), stride, padding, rows,
                {PACKED_TILES_ATTR: [rows, vectors, lanes]})
    if len(gemm.shape) == 4:
        y = te.compute(shape_y, lambda b, o, i, j: gemm[b, o, i, j], name="conv2d")
    else:
        y = te.compute(shape_y, lambda b, o, i, j: gemm[b, o, i * out_w + j], name="conv2d")
    operands, out = apply_epilogue(y, epilogue, dtype)
    return [x, packed, *operands], [out]


def _padded(x: te.Tensor, padding: Pair, size: Pair) -> te.Tensor:
    """``x`` padded at the start by ``padding`` to at least ``size`` (the reach of every
    window the product reads), or ``x`` itself where it reaches that far unpadded."""
    height, width = (int(d) for d in x.shape[2:])
    size = (max(height + 2 * padding[0], size[0]), max(width + 2 * padding[1], size[1]))
    if padding == (0, 0) and size == (height, width):
        return x
    return embed(x, padding, size, 0.0)


def _reduce_axes(in_channels: int, kernel: Pair) -> list:
    return [te.reduce_axis((0, in_channels), name="rc"), te.reduce_axis((0, kernel[0]), name="ry"),
            te.reduce_axis((0, kernel[1]), name="rx")]


def _in_place_product(x, packed, kernel: Pair, out_size: Pair, stride: Pair, padding: Pair,
                      rows: int, attrs: dict):
    """The product ``(N, channels, H', W)`` reading the padded image in place, ``H'`` the
    output rows rounded up to whole tiles (their extra rows never stored)."""
    (kh, kw), (out_h, out_w), (sh, sw) = kernel, out_size, stride
    tile_rows = max(1, rows // out_w)
    rows_padded = _round_up(out_h, tile_rows)
    image = _padded(x, padding, ((rows_padded - 1) * sh + kh, (out_w - 1) * sw + kw))
    rc, ry, rx = _reduce_axes(int(x.shape[1]), kernel)
    panel = int(packed.shape[2])

    def product(b, o, i, j):
        k = (rc * kh + ry) * kw + rx
        return te.sum(image[b, rc, i * sh + ry, j * sw + rx] * packed[o // panel, k, o % panel],
                      axis=[rc, ry, rx])

    channels = int(packed.shape[0]) * panel
    return te.compute((int(x.shape[0]), channels, rows_padded, out_w), product,
                      name=PACKED_BLOCK, attrs=attrs)


def _windows_product(x, packed, kernel: Pair, out_size: Pair, stride: Pair, padding: Pair,
                     rows: int, attrs: dict):
    """The product ``(N, channels, positions)`` reading each image's windows copied in
    tiles of ``rows`` positions, the positions rounded up to whole tiles."""
    (kh, kw), (out_h, out_w), (sh, sw) = kernel, out_size, stride
    in_channels = int(x.shape[1])
    tile_count = -(-out_h * out_w // rows)
    # Padded so that every window of the last tile's extra positions lies inside it (their
    # results are never stored).
    last_row = (tile_count * rows - 1) // out_w
    image = _padded(x, padding, (last_row * sh + kh, (out_w - 1) * sw + kw))

    def window(b, t, c, ry, rx, r):
        p = t * rows + r
        return image[b, c, p // out_w * sh + ry, p % out_w * sw + rx]

    col = te.compute((int(x.shape[0]), tile_count, in_channels, kh, kw, rows), window,
                     name=PACKED_COL)
    rc, ry, rx = _reduce_axes(in_channels, kernel)
    panel = int(packed.shape[2])

    def product(b, o, p):
        k = (rc * kh + ry) * kw + rx
        return te.sum(col[b, p // rows, rc, ry, rx, p % rows]
                      * packed[o // panel, k, o % panel], axis=[rc, ry, rx])

    channels = int(packed.shape[0]) * panel
    return te.compute((int(x.shape[0]), channels, tile_count * rows), product,
                      name=PACKED_BLOCK, attrs=attrs)


def schedule_conv_prepacked(sch: s_tir.Schedule) -> None:
    """Images in parallel (or, with fewer images than cores and enough work, panels of
    channels and tiles of positions), per image any padded copy and windows; the product
    in register tiles of positions x channel vectors, written back (with any epilogue) per
    tile."""
    gemm = sch.get_sblock(PACKED_BLOCK)
    stmt = sch.get(gemm)
    rows, vectors, lanes = (int(v) for v in stmt.annotations[PACKED_TILES_ATTR])
    sch.unannotate(gemm, PACKED_TILES_ATTR)
    out = fold_epilogue(sch, gemm)
    image, o, *positions, rc, ry, rx = sch.get_loops(gemm)
    o_panel, o_vector, o_lane = sch.split(o, factors=[None, vectors, lanes])
    if len(positions) == 2:
        # In place: tiles of whole rows, or of parts of one.
        row, column = positions
        out_width = int(sch.get(column).extent)
        if rows % out_width == 0:
            tile, row_in_tile = sch.split(row, factors=[None, rows // out_width])
            outer, unrolled = [tile], [row_in_tile, column]
        else:
            tile, in_tile = sch.split(column, factors=[None, rows])
            outer, unrolled = [row, tile], [in_tile]
        sch.transform_layout(gemm, ("write", 0), lambda b, o, i, j: (b, i, j, o))
    else:
        out_width = int(sch.get(out).iter_vars[3].dom.extent)
        sch.transform_block_layout(out, lambda b, o, i, j: (b, o, i * out_width + j))
        p_tile, p_row = sch.split(positions[0], factors=[None, rows])
        outer, unrolled = [p_tile], [p_row]
        # Channels innermost in the accumulators, so that each vector of them is one register.
        sch.transform_layout(gemm, ("write", 0), lambda b, o, p: (b, p, o))
    sch.reorder(image, o_panel, *outer, rc, ry, rx, *unrolled, o_vector, o_lane)
    sch.set_scope(gemm, 0, "local")
    sch.reverse_compute_at(out, outer[-1], preserve_unit_loops=True)
    _unroll_write_back(sch, out)
    producers = [b for b in sch.get_producers(gemm)]
    producers += [b for c in producers for b in sch.get_producers(c)]
    batch = int(sch.get(image).extent)
    if batch >= available_cpus():
        for block in producers:
            sch.compute_at(block, image, preserve_unit_loops=True)
            vectorize_innermost(sch, block)
        if batch > 1:
            sch.parallel(image)
    else:
        work = math.prod(int(sch.get(loop).extent) for loop in sch.get_loops(gemm))
        for block in producers:
            loops = sch.get_loops(block)
            fused = sch.fuse(*loops[:2])
            if work >= PARALLEL_MIN_WORK:
                sch.parallel(fused)
            vectorize_innermost(sch, block)
        fused = sch.fuse(image, o_panel, *outer)
        if work >= PARALLEL_MIN_WORK:
            sch.parallel(fused)
    for loop in unrolled:
        sch.unroll(loop)
    sch.unroll(o_vector)
    sch.vectorize(o_lane)
    sch.decompose_reduction(gemm, rc)


def _unroll_write_back(sch: s_tir.Schedule, out) -> None:
    """The write-back's loops over its tile (``out`` placed at the tile) unrolled but the last
    (positions along a row, left to LLVM): the accumulators then go from registers to the
    output, where a loop over the channels kept the tile in a stack buffer too. Measured on
    znver4, batch 32, one thread: MobileNet v2's 160 -> 960 channel layer on 7 x 7 pixels
    5.8 -> 4.8 ms, its 320 -> 1280 one 13.2 -> 12.0 ms, ResNet-18's 256 -> 512 pointwise one
    4.9 -> 4.2 ms, its 3 x 3 ones 1.04-1.07x faster; the 14 x 14 layers as fast."""
    tile_loops = sch.get_loops(out)[-len(sch.get(out).iter_vars):]
    for loop in tile_loops[:-1]:
        sch.unroll(loop)
