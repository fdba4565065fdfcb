"""Winograd's minimal filtering for 3 x 3, stride-1, undilated, ungrouped convolutions with
constant filters (inference): ``F(m x m, 3 x 3)`` computes each ``m x m`` tile of outputs
from an ``a x a`` tile of inputs (``a = m + 2``) with ``a * a`` multiplies per channel pair
instead of ``9 * m * m`` (2.25x fewer for ``F(2, 3)``, 4x for ``F(4, 3)``).

With ``B``, ``G`` and ``A`` the transforms below, an output tile of channel ``k`` is::

    Y_tile[k] = A^T [ sum_c (G f[k, c] G^T) (.) (B^T d_tile[c] B) ] A

where ``(.)`` multiplies element by element. ``G f G^T`` is made once per filter, when an
inference session first runs (``winograd_filters``: ``U[e, q, c, l]``, ``e`` the ``a * a``
transformed points, ``q`` panels of ``l`` output channels); the sum over channels is ``a * a``
small matrix products, one per point, each vectorised along output channels as
``packed.py``'s. Per block of ``G`` rows of tiles of one image (or, on small planes, of every
row of a few images, so that each block reads the transformed filters for more tiles)::

    parallel for block:
        for c in C:                                 # the block's input tiles, in L2
            phases = rows of image c padded, each split into its m phases (columns m*q + r)
            for each row of tiles: rows = B^T along rows (vectors of tiles), V[:, c] = down
        for k_panel in K / (vectors * lanes):
            for e in a * a:
                for tiles / R: acc[R, vectors * lanes] = sum_c V[e, c, t] * U[e, k_panel, c, :]
                M[e, tile, k] = acc                 # the block's products, in L2
            for tile: Y[b, k, tile] = epilogue(A^T M[:, tile, k] A)   # vectors of channels

On znver4 (AVX-512 run as two halves) the products ran at about the FMA units' peak and took
about half of the time on ResNet-18's 56 x 56 layer; reading the images, the transforms and
the output's stores (a vector of channels is a scatter into NCHW) took the rest.
Tiles past the output's edge read the zero padding and are never stored. The transforms are
the usual ones of Lavin and Gray (2015), from the interpolation points 0, 1, -1 (and 2, -2
for ``F(4, 3)``) and infinity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from tvm import s_tir, te, tirx

from dlsys.errors import ShapeError
from dlsys.kernels import available_cpus
from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.conv.schedule import fold_epilogue

Pair = tuple[int, int]

# (B^T, G, A^T) of F(m, 3) by output tile size m.
_F = Fraction
TRANSFORMS = {
    2: ((( 1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (_F(1, 2), _F(1, 2), _F(1, 2)), (_F(1, 2), _F(-1, 2), _F(1, 2)), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
         (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((_F(1, 4), 0, 0), (_F(-1, 6), _F(-1, 6), _F(-1, 6)), (_F(-1, 6), _F(1, 6), _F(-1, 6)),
         (_F(1, 24), _F(1, 12), _F(1, 6)), (_F(1, 24), _F(-1, 12), _F(1, 6)), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}

# Fewer channels than this in or out: the transforms cost more than the product saves.
MIN_CHANNELS = 32
# F(4, 3) where each block reads the transformed filters (36 points per channel pair) at most
# this many L2s per tile of the block, else F(2, 3) (16 points): every block reads them all
# once. Measured on znver4, one thread: ResNet-18's 512-channel 7 x 7 layer (37.7 MB of
# F(4, 3) filters) at batch 32 took 65.6 ms with F(4, 3) and one image (four tiles) a block,
# 50.0 with F(2, 3), 33.6 with F(4, 3) and eight images a block, 69.2 directly; its 128-
# channel 28 x 28 layer (2.4 MB) ran fastest with F(4, 3) and seven tiles a block.
FILTER_L2S_PER_TILE = 2
# Tiles per block where a block is whole images, at most (more, on 7 x 7 planes, ran slower).
BLOCK_TILES = 32
# A register tile is a part of one row of tiles where that has at least this many tiles, else
# whole rows (or images) up to the registers: measured on znver4, one thread, ResNet-18's
# 28 x 28 layer ran 1.3x faster with 7 tiles (one row) than with 14 (two), its 14 x 14 one
# (rows of 4 tiles) 1.1x faster with 8 than with 4, its 7 x 7 one at batch 1 1.2x faster.
MIN_ROW_TILES = 7

INPUT_BLOCK = "winograd_input"
PRODUCT_BLOCK = "winograd_product"
OUTPUT_BLOCK = "winograd_output"
# The block annotation carrying the layout to the schedule.
LAYOUT_ATTR = "dlsys_winograd_layout"


@dataclass(frozen=True)
class WinogradLayout:
    """``F(tile, 3)``; blocks of ``block_rows`` rows of tiles of one image, or of every row
    of ``images`` images; register tiles of ``tiles`` tiles by ``vectors`` vectors of
    ``lanes`` output channels (a panel)."""

    tile: int
    block_rows: int
    tiles: int
    vectors: int
    lanes: int
    images: int = 1

    @property
    def panel(self) -> int:
        return self.vectors * self.lanes

    @property
    def points(self) -> int:
        return (self.tile + 2) ** 2


def transforms(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(B^T, G, A^T)`` of ``F(tile, 3)`` as float64 arrays (for references and tests)."""
    return tuple(np.array(m, dtype=np.float64) for m in TRANSFORMS[tile])


def _combine(coefficients: Sequence, terms: Sequence, dtype: str):
    """``sum coefficients[i] * terms[i]`` with the zero coefficients left out and the unit
    ones not multiplied (the transforms are mostly 0 and +-1)."""
    total = None
    for coefficient, term in zip(coefficients, terms):
        if coefficient == 0:
            continue
        if coefficient == 1:
            value = term
        elif coefficient == -1:
            value = -term
        else:
            value = term * tirx.const(float(coefficient), dtype)
        total = value if total is None else total + value
    return total if total is not None else tirx.const(0, dtype)


def _by_row(row, expressions: Sequence):
    """``expressions[row]`` for a loop variable ``row``: a chain of selects that unrolling
    the loop folds to one expression per row."""
    value = expressions[-1]
    for index in range(len(expressions) - 2, -1, -1):
        value = tirx.Select(row == index, expressions[index], value)
    return value


def winograd_filters(shape_f: Shape, tile: int, panel: int,
                     dtype: str) -> tuple[TensorList, TensorList]:
    """``U[e, q, c, l] = (G F[q * panel + l, c] G^T)[e // a, e % a]``: OIHW 3 x 3 filters
    transformed for ``F(tile, 3)``, in panels of ``panel`` output channels (the last one
    zero-filled)."""
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    channels, in_channels = int(shape_f[0]), int(shape_f[1])
    _, g, _ = TRANSFORMS[tile]
    alpha = tile + 2

    def body(e, q, c, lane):
        k = q * panel + lane
        eps, nu = e // alpha, e % alpha
        # G f: the filter's columns, then (G f) G^T along its rows.
        rows = [_by_row(eps, [_combine(g[i], [f[k, c, r, s] for r in range(3)], dtype)
                              for i in range(alpha)]) for s in range(3)]
        value = _by_row(nu, [_combine(g[j], rows, dtype) for j in range(alpha)])
        return value if channels % panel == 0 else tirx.if_then_else(
            k < channels, value, tirx.const(0, dtype))

    shape = (alpha * alpha, -(-channels // panel), in_channels, panel)
    return [f], [te.compute(shape, body, name="winograd_filters")]


def conv2d_winograd(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                    padding: Pair, layout: tuple, epilogue: Sequence[tuple[Epilogue, Callable]],
                    dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(X * F)`` for 3 x 3, stride-1 filters transformed by ``winograd_filters``;
    ``layout`` is ``WinogradLayout``'s fields in order. Inputs are X, the transformed
    filters, then each epilogue step's operand."""
    plan = WinogradLayout(*(int(v) for v in layout))
    if tuple(shape_f[2:]) != (3, 3) or tuple(stride) != (1, 1) or plan.tile not in TRANSFORMS:
        raise ShapeError(f"conv2d_winograd: F({plan.tile}, 3) for filters {tuple(shape_f)} at "
                         f"stride {tuple(stride)}: only 3 x 3 filters at stride 1, tiles of "
                         f"{sorted(TRANSFORMS)}")
    n, in_channels = (int(d) for d in shape_x[:2])
    channels, (out_h, out_w) = int(shape_f[0]), (int(d) for d in shape_y[2:])
    m, alpha, panel = plan.tile, plan.tile + 2, plan.panel
    b_t, _, a_t = TRANSFORMS[m]
    tile_h, tile_w = -(-out_h // m), -(-out_w // m)
    block = plan.images * plan.block_rows * tile_w
    if (block % plan.tiles or n % plan.images or tile_h % plan.block_rows
            or (plan.images > 1 and plan.block_rows != tile_h)
            or not _whole_rows(plan.tiles, tile_w, plan.block_rows * tile_w)):
        raise ShapeError(f"conv2d_winograd: {plan} does not split {n} images of {tile_h} x "
                         f"{tile_w} tiles into whole blocks of whole register tiles")
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    u = te.placeholder((alpha * alpha, -(-channels // panel), in_channels, panel), dtype=dtype,
                       name="U")
    phases = _phases(x, padding, m, tile_h * m + 2, tile_w + 1)
    # B^T d B in two passes: along each row of the padded image (the columns ``m * tx + s``
    # of its tiles read as phase ``s % m`` of the copy, a vector along ``tx``), then down
    # the columns.
    rows = te.compute(
        (n, in_channels, tile_h * m + 2, alpha, tile_w),
        lambda b, c, y, nu, tx: _by_row(nu, [
            _combine(b_t[j], [phases[b, c, y, s % m, tx + s // m] for s in range(alpha)],
                     dtype) for j in range(alpha)]), name="winograd_rows")
    v = te.compute(
        (n, alpha * alpha, in_channels, tile_h, tile_w),
        lambda b, e, c, ty, tx: _by_row(e // alpha, [
            _combine(b_t[i], [rows[b, c, m * ty + r, e % alpha, tx] for r in range(alpha)],
                     dtype) for i in range(alpha)]), name=INPUT_BLOCK)
    rc = te.reduce_axis((0, in_channels), name="rc")
    product = te.compute(
        (n, alpha * alpha, tile_h, tile_w, u.shape[1] * panel),
        lambda b, e, ty, tx, k: te.sum(v[b, e, rc, ty, tx] * u[e, k // panel, rc, k % panel],
                                       axis=rc),
        name=PRODUCT_BLOCK, attrs={LAYOUT_ATTR: list(layout)})
    # A^T M A in two passes: down the columns (vectors of channels), then along the rows.
    columns = te.compute(
        (n, tile_h, tile_w, m, alpha, u.shape[1] * panel),
        lambda b, ty, tx, i, nu, k: _by_row(i, [
            _combine(a_t[r], [product[b, eps * alpha + nu, ty, tx, k] for eps in range(alpha)],
                     dtype) for r in range(m)]), name="winograd_columns")
    y = te.compute(
        shape_y,
        lambda b, k, i, j: _by_row(j % m, [
            _combine(a_t[s], [columns[b, i // m, j // m, i % m, nu, k] for nu in range(alpha)],
                     dtype) for s in range(m)]), name=OUTPUT_BLOCK)
    operands, out = apply_epilogue(y, epilogue, dtype)
    return [x, u, *operands], [out]


def _phases(x: te.Tensor, padding: Pair, tile: int, height: int, width: int) -> te.Tensor:
    """``P[b, c, y, r, q] = padded x[b, c, y, tile * q + r]``: the zero-padded images with
    each row split into its ``tile`` phases, so that the row transform reads each column of
    a row of tiles as a contiguous vector (a strided read, once per element, here)."""
    n, c, h, w = (int(d) for d in x.shape)
    ph, pw = padding

    def body(b, ch, y, r, q):
        column = tile * q + r
        inside = tirx.all(y >= ph, y < h + ph, column >= pw, column < w + pw)
        return tirx.if_then_else(inside, x[b, ch, y - ph, column - pw], tirx.const(0, x.dtype))

    return te.compute((n, c, height, tile, width), body, name="winograd_pad")


def schedule_conv_winograd(sch: s_tir.Schedule) -> None:
    """Blocks of rows of tiles of each image in parallel; per block the padded rows and
    their transform, then per panel of channels the products in register tiles and the
    output transform of each tile, written back with any epilogue."""
    product = sch.get_sblock(PRODUCT_BLOCK)
    plan = WinogradLayout(*(int(v) for v in sch.get(product).annotations[LAYOUT_ATTR]))
    sch.unannotate(product, LAYOUT_ATTR)
    columns = sch.get_sblock("winograd_columns")
    out = fold_epilogue(sch, columns)
    m = plan.tile
    image, k, row, column = sch.get_loops(out)
    image, in_block = sch.split(image, factors=[None, plan.images])
    block, tile_row, in_row = sch.split(row, factors=[None, plan.block_rows, m])
    tile_column, in_column = sch.split(column, factors=[None, m])
    k_panel, k_vector, k_lane = sch.split(k, factors=[None, plan.vectors, plan.lanes])
    sch.reorder(image, block, k_panel, in_block, tile_row, tile_column, in_row, in_column,
                k_vector, k_lane)
    sch.unroll(in_row)
    sch.unroll(in_column)
    sch.unroll(k_vector)
    sch.vectorize(k_lane)
    # The output transform's first pass per tile, in registers.
    sch.compute_at(columns, tile_column, preserve_unit_loops=True)
    sch.set_scope(columns, 0, "local")
    *_, c_i, c_nu, c_k = sch.get_loops(columns)
    c_vector, c_lane = sch.split(c_k, factors=[None, plan.lanes])
    sch.unroll(c_i)
    sch.unroll(c_nu)
    sch.unroll(c_vector)
    sch.vectorize(c_lane)
    reduction = _schedule_products(sch, product, k_panel, plan)
    _schedule_input_tiles(sch, block)
    blocks = sch.fuse(image, block)
    if int(sch.get(blocks).extent) > 1:
        sch.parallel(blocks)
    # Last: the initialisation's own loops would keep the blocks from running in parallel.
    sch.decompose_reduction(product, reduction)


def _schedule_products(sch: s_tir.Schedule, product, k_panel, plan: WinogradLayout):
    """The block's products for one panel of channels, at ``k_panel``: per transformed
    point, register tiles of ``plan.tiles`` tiles by the panel's vectors, summed over the
    input channels (the loop returned)."""
    sch.compute_at(product, k_panel, preserve_unit_loops=True)
    *_, p_b, p_e, p_ty, p_tx, p_k, p_c = sch.get_loops(product)
    sch.reorder(p_e, p_b)
    tiles = sch.fuse(p_b, p_ty, p_tx)
    t_outer, t_inner = sch.split(tiles, factors=[None, plan.tiles])
    p_vector, p_lane = sch.split(p_k, factors=[None, plan.lanes])
    sch.reorder(p_e, t_outer, p_c, t_inner, p_vector, p_lane)
    accumulators = sch.cache_write(product, 0, "local")
    sch.reverse_compute_at(accumulators, t_outer, preserve_unit_loops=True)
    sch.unroll(t_inner)
    sch.unroll(p_vector)
    sch.vectorize(p_lane)
    # The accumulators' copy out unrolled over the tile, a vector at a time: LLVM then keeps
    # them in registers to the store, where a loop over the tiles kept a stack copy too
    # (measured on znver4, batch 32, one thread: ResNet-18's four shapes of 3 x 3 layers
    # 1.02-1.06x faster, its 56 x 56 one 29.7 -> 28.0 ms).
    _, lane = sch.split(sch.get_loops(accumulators)[-1], factors=[None, plan.lanes])
    # Its own loops: one per dimension, and the lanes split off the last.
    own_loops = len(sch.get(accumulators).iter_vars) + 1
    for loop in sch.get_loops(accumulators)[-own_loops:-1]:
        sch.unroll(loop)
    sch.vectorize(lane)
    return p_c


def _schedule_input_tiles(sch: s_tir.Schedule, block) -> None:
    """The block's input tiles, transformed at ``block``; each channel's padded rows and
    each row of tiles' row pass in L1 (recomputing the rows two tile rows share)."""
    v = sch.get_sblock(INPUT_BLOCK)
    sch.compute_at(v, block, preserve_unit_loops=True)
    *_, v_b, v_e, v_c, v_ty, v_tx = sch.get_loops(v)
    sch.reorder(v_b, v_c, v_ty, v_e, v_tx)
    sch.unroll(v_e)
    rows = sch.get_sblock("winograd_rows")
    sch.compute_at(rows, v_ty, preserve_unit_loops=True)
    *_, r_y, r_nu, r_tx = sch.get_loops(rows)
    sch.unroll(r_nu)
    sch.vectorize(v_tx)
    sch.vectorize(r_tx)
    pad = sch.get_sblock("winograd_pad")
    sch.compute_at(pad, v_c, preserve_unit_loops=True)
    # Each row's phases: a strided read of the image row, left to LLVM's vectoriser.
    sch.unroll(sch.get_loops(pad)[-2])


def winograd_layout(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                    dtype: str, cpu: cpu_facts.CpuFacts | None = None) -> WinogradLayout | None:
    """The layout of Winograd's filtering for this convolution, or None where the direct
    kernels stay (not 3 x 3 at stride 1, or fewer than ``MIN_CHANNELS`` channels in or
    out). ``F(4, 3)`` where a block's tiles read its transformed filters at most
    ``FILTER_L2S_PER_TILE`` L2s per tile, else ``F(2, 3)``."""
    cpu = cpu or cpu_facts.host()
    if (tuple(shape_f[2:]) != (3, 3) or tuple(stride) != (1, 1)
            or min(shape_f[0], shape_f[1]) < MIN_CHANNELS):
        return None
    vectors = 2 if shape_f[0] % (2 * cpu.lanes(dtype)) == 0 else 1
    plan = _blocks(shape_x, shape_f, shape_y, 4, vectors, dtype, cpu)
    block_tiles = plan.images * plan.block_rows * -(-shape_y[3] // 4)
    filter_bytes = 36 * shape_f[0] * shape_f[1] * np.dtype(dtype).itemsize
    if filter_bytes <= FILTER_L2S_PER_TILE * cpu.l2_bytes * block_tiles:
        return plan
    return _blocks(shape_x, shape_f, shape_y, 2, vectors, dtype, cpu)


def _blocks(shape_x: Shape, shape_f: Shape, shape_y: Shape, tile: int, vectors: int,
            dtype: str, cpu: cpu_facts.CpuFacts) -> WinogradLayout:
    """Blocks of whole rows of tiles whose transformed inputs fit half an L2, at least one
    per core where the images allow; where a block is a whole image, as many images as make
    ``BLOCK_TILES`` tiles (each block reads every transformed filter once)."""
    batch = shape_x[0]
    tile_h, tile_w = -(-shape_y[2] // tile), -(-shape_y[3] // tile)
    per_row = (tile + 2) ** 2 * shape_f[1] * tile_w * np.dtype(dtype).itemsize
    most = max(1, min(tile_h, cpu.l2_bytes // 2 // per_row))
    divisors = [r for r in range(1, most + 1) if tile_h % r == 0]
    rows = max([r for r in divisors if batch * (tile_h // r) >= available_cpus()] or [1])
    images = 1
    if rows == tile_h:
        images = max(d for d in range(1, batch + 1) if batch % d == 0
                     and (d == 1 or (d * tile_h * tile_w <= BLOCK_TILES
                                     and batch // d >= available_cpus())))
    # The accumulators, the loaded filter vectors and one broadcast in the registers; a
    # register tile is a part of a row of tiles, else whole rows or whole images (so that
    # the region it writes back is exactly its tiles).
    most_tiles = (cpu.vector_registers - vectors - 1) // vectors
    in_row = max(r for r in range(1, most_tiles + 1) if tile_w % r == 0)
    if in_row >= MIN_ROW_TILES:
        return WinogradLayout(tile, rows, in_row, vectors, cpu.lanes(dtype), images)
    block = images * rows * tile_w
    whole = [r for r in range(1, most_tiles + 1)
             if block % r == 0 and _whole_rows(r, tile_w, rows * tile_w)]
    return WinogradLayout(tile, rows, max(whole), vectors, cpu.lanes(dtype), images)


def _whole_rows(tiles: int, tile_w: int, image_tiles: int) -> bool:
    """Whether ``tiles`` consecutive tiles of a block are a part of one row of tiles, whole
    rows of one image, or whole images: a box of the tile grid, which the register tile's
    write-back covers exactly."""
    return (tile_w % tiles == 0 or (tiles % tile_w == 0 and image_tiles % tiles == 0)
            or tiles % image_tiles == 0)
