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
        pad[b], col[b, t, k, r] = windows of positions t*R + r   # of channels (batch 1)
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tvm import s_tir, te, tirx

from dlsys.kernels import available_cpus
from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.conv.compute import embed
from dlsys.kernels.conv.schedule import fold_epilogue, gemm_tile, vectorize_innermost

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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class PackedTile:
    """``positions`` output positions by ``vectors`` vectors of ``lanes`` output channels;
    the filters' panels are ``vectors * lanes`` channels wide."""

    positions: int
    vectors: int
    lanes: int

    @property
    def panel(self) -> int:
        return self.vectors * self.lanes


def packed_tiles(shape_f: Shape, shape_y: Shape, dtype: str,
                 cpu: cpu_facts.CpuFacts | None = None) -> PackedTile | None:
    """The register tile of the channel-vectorised kernel for these filters and output, or
    None where the position-vectorised implicit GEMM (``schedule.gemm_tile``) is expected
    to run as fast (``PACKED_MIN_GAIN``)."""
    cpu = cpu or cpu_facts.host()
    lanes = cpu.lanes(dtype)
    channels, positions = shape_f[0], shape_y[2] * shape_y[3]
    taps = shape_f[1] * shape_f[2] * shape_f[3]
    # Two vectors of channels where they fill whole panels, else one (fewer padded).
    vectors = 2 if channels % (2 * lanes) == 0 else 1
    # As many positions as registers allow beside the V loaded filter vectors and one
    # broadcast, fewest padded positions first.
    most = (cpu.vector_registers - vectors - 1) // vectors
    rows = min(range(max(1, most // 2), most + 1),
               key=lambda r: (_round_up(positions, r), -r))
    tile = PackedTile(rows, vectors, lanes)
    gemm = gemm_tile(channels, positions, dtype, cpu)
    position_work = channels * _round_up(positions, gemm.columns) * taps
    channel_work = (_round_up(channels, tile.panel) * _round_up(positions, rows)
                    * (taps + lanes))
    return tile if position_work >= PACKED_MIN_GAIN * channel_work else None


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


def conv2d_prepacked(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                     padding: Pair, tiles: tuple, epilogue: Sequence[tuple[Epilogue, Callable]],
                     dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(X * F)`` (an ungrouped, undilated convolution) with F already packed by
    ``pack_filters`` into panels of ``tiles[1] * tiles[2]`` channels; ``tiles`` is
    ``(positions, vectors, lanes)`` of the register tile. Inputs are X, the panels, then
    each epilogue step's operand."""
    rows, vectors, lanes = (int(t) for t in tiles)
    panel = vectors * lanes
    n, in_channels, height, width = shape_x
    out_channels, _, kh, kw = shape_f
    out_h, out_w = shape_y[2:]
    (sh, sw) = stride
    taps = in_channels * kh * kw
    positions = out_h * out_w
    tile_count = -(-positions // rows)
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    packed = te.placeholder((-(-out_channels // panel), taps, panel), dtype=dtype,
                            name="F_packed")
    # Padded so that every window of the last tile's extra positions lies inside it (their
    # results are never stored).
    last_row = (tile_count * rows - 1) // out_w
    size = (max(height + 2 * padding[0], last_row * sh + kh),
            max(width + 2 * padding[1], (out_w - 1) * sw + kw))
    image = x if (padding == (0, 0) and size == (height, width)) else embed(x, padding, size, 0.0)

    def window(b, t, c, ry, rx, r):
        p = t * rows + r
        return image[b, c, p // out_w * sh + ry, p % out_w * sw + rx]

    col = te.compute((n, tile_count, in_channels, kh, kw, rows), window, name=PACKED_COL)
    rc = te.reduce_axis((0, in_channels), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def product(b, o, p):
        k = (rc * kh + ry) * kw + rx
        return te.sum(col[b, p // rows, rc, ry, rx, p % rows]
                      * packed[o // panel, k, o % panel], axis=[rc, ry, rx])

    gemm = te.compute((n, -(-out_channels // panel) * panel, tile_count * rows), product,
                      name=PACKED_BLOCK, attrs={PACKED_TILES_ATTR: [rows, vectors, lanes]})
    y = te.compute(shape_y, lambda b, o, i, j: gemm[b, o, i * out_w + j], name="conv2d")
    operands, out = apply_epilogue(y, epilogue, dtype)
    return [x, packed, *operands], [out]


def schedule_conv_prepacked(sch: s_tir.Schedule) -> None:
    """Images in parallel (or, with fewer images than cores, panels of channels), per image
    the padded copy and the windows in tiles of positions; the product in register tiles of
    positions x channel vectors, written back (with any epilogue) per tile."""
    gemm = sch.get_sblock(PACKED_BLOCK)
    stmt = sch.get(gemm)
    rows, vectors, lanes = (int(v) for v in stmt.annotations[PACKED_TILES_ATTR])
    sch.unannotate(gemm, PACKED_TILES_ATTR)
    out = fold_epilogue(sch, gemm)
    out_width = int(sch.get(out).iter_vars[3].dom.extent)
    sch.transform_block_layout(out, lambda b, o, i, j: (b, o, i * out_width + j))
    image, o, p, rc, ry, rx = sch.get_loops(gemm)
    o_panel, o_vector, o_lane = sch.split(o, factors=[None, vectors, lanes])
    p_tile, p_row = sch.split(p, factors=[None, rows])
    # Channels innermost in the accumulators, so that each vector of them is one register.
    sch.transform_layout(gemm, ("write", 0), lambda b, o, p: (b, p, o))
    sch.reorder(image, o_panel, p_tile, rc, ry, rx, p_row, o_vector, o_lane)
    sch.set_scope(gemm, 0, "local")
    sch.reverse_compute_at(out, p_tile, preserve_unit_loops=True)
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
        for block in producers:
            loops = sch.get_loops(block)
            sch.parallel(sch.fuse(*loops[:2]))
            vectorize_innermost(sch, block)
        sch.parallel(sch.fuse(image, o_panel))
    sch.unroll(p_row)
    sch.unroll(o_vector)
    sch.vectorize(o_lane)
    sch.decompose_reduction(gemm, rc)
