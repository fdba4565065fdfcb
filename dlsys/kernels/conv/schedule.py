"""How convolutions run on a CPU: tile choices and the schedules of the ``conv_gemm``,
``conv_direct`` and ``conv_weight`` families (the compute definitions are in
``dlsys.kernels.conv.gemm`` and ``dlsys.kernels.conv.compute``; pooling's schedule is in
``window_schedule``).

The forward convolution is a small matrix product per image (an
*implicit GEMM*): ``Y[b, o, p] = sum_k F[o, k] col[b, k, p]`` where ``p`` runs over output
positions, flattened, and ``k`` over (channel, filter row, filter column). Per image::

    parallel for b in N:
        pad[b] = image b with its zero border (and extra zero rows, below)
        col[b] = pad[b]'s windows, one row of output positions per k   # in L1/L2
        for (o, p) tile of rows x (vectors * lanes):
            acc = 0                                   # rows * vectors registers
            for k in K: acc += F[o, k] (broadcast) * col[b, k, p] (vectors)
            Y[b, o, p] = epilogue(acc)                # clipped to the real positions

``p`` is padded to whole vectors, so the FMA loop never tests bounds; the padding reads
zero rows added below the image, and its results are never stored. Channels are few in the
networks dlsys trains (1 to 64), so vectors run along positions, which are many.

The input adjoint is a direct convolution of the padded gradient (``conv_direct``): vector
lanes along output rows padded to whole vectors, a register tile of channels x rows, each
step a shifted row of the padded gradient times a broadcast filter tap. With 16 to 64 input
channels its implicit GEMM would copy 16 x 25 window planes per image, more than the product
costs.

The weight adjoint reduces over images and positions into a small filter. Vectorising its
output would pad 25 taps to 32; instead each vector lane keeps a partial sum along an
output row, rows of ``G`` padded to whole vectors with zeros::

    parallel for t in threads:
        for chunk of images in t's share:
            pad, G rows padded                      # per chunk, in cache
            for (o, c, ry) tile:
                acc[o, rx, lane] = sum over images, rows i and vectors v of
                    G[b, o, i, v + lane] * pad[b, c, i + ry, v + lane + rx]
                partial[t, o, c, ry, rx, lane] += acc
    dF[o, c, ry, rx] = sum over t and lanes of partial

Tiles come from the register file of the CPU (``dlsys.kernels.cpu``): measured on a znver4
VM (AVX-512), LeNet's convolutions run fastest with one vector of positions per row (the
least padding) and as many rows as registers allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx

from dlsys.kernels import available_cpus
from dlsys.kernels import cpu as cpu_facts

GEMM_BLOCK = "conv_gemm"
COL_PANELS = "col_panels"  # the implicit GEMM's windows copied a panel at a time
DIRECT_BLOCK = "conv_direct"
WEIGHT_BLOCK = "conv_weight_chunk"
# Images per chunk of the weight adjoint: enough rows in each register tile's reduction to
# repay its set-up, few enough that a chunk's padded images stay in L2 (measured on LeNet's
# second convolution: 16 images ran 1.4x faster than 8).
WEIGHT_CHUNK_IMAGES = 16
# At most this many rows in a register tile: each is one broadcast load per k.
MAX_TILE_ROWS = 16
# An implicit GEMM whose windows per image exceed this many L2s, with at most
# ``PANEL_MAX_TAPS`` taps per position, copies them per panel of positions
# (``col_in_panels``): measured on znver4 (one thread, 16 x 1 tiles), ResNet's first
# convolution (147 taps, 7.4 MB of windows per image) ran 1.06x faster so, but its 56 x 56
# layers (576 taps, 7.2 MB) 1.18x slower, and with 1-2 MB of windows the copy per image was
# as fast.
COL_L2_MULTIPLE = 4
PANEL_MAX_TAPS = 256
# An implicit GEMM whose windows per image exceed this many L2s copies them per panel of a
# few whole output rows where such a panel is whole tiles (``row_panel``), before any
# other layout: each row of a tap's windows is then a (strided) image row, copied by whole
# vectors, not lane by lane across rows, and a panel of at most one L2 stays in cache for
# every tile of channels. Measured on znver4 at batch 32, one thread, against the layouts
# before (the copy then vectorised by TVM): ResNet-18's 56 x 56 layers 75.0 -> 71.4 ms, its
# first 82.0 -> 78.5 ms, its 56 -> 28 one 37.6 -> 36.4 ms, its 28 x 28 layers 68.9 -> 67.5
# ms; twice or four times the rows per panel was no faster.
ROW_PANEL_L2_MULTIPLE = 1
# Output channels up to which a pointwise GEMM may take each image's positions once
# (``images_pass_once``): the output is then written to every channel's plane per tile of
# positions, and 96 such streams ran slower.
PASS_ONCE_MAX_CHANNELS = 32
# Accumulator rows of a tile whose images stream from memory, as a share of the vector
# registers (``streamed_tile``).
STREAMED_ROWS_SHARE = 0.25


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class GemmTile:
    """``rows`` output channels by ``vectors`` vectors of ``lanes`` positions."""

    rows: int
    vectors: int
    lanes: int

    @property
    def columns(self) -> int:
        return self.vectors * self.lanes


def gemm_tile(channels: int, positions: int, dtype: str,
              cpu: cpu_facts.CpuFacts | None = None) -> GemmTile:
    """The register tile for an implicit GEMM with ``channels`` output rows.

    Fewest padded positions first (ties to fewer vectors: more rows share each loaded
    vector, and a 16 x 1 tile ran ResNet's 56 x 56 and first layers 1.05x and 1.46x faster than
    4 x 4 on znver4), then the most rows dividing ``channels`` for which the accumulators,
    the loaded vectors and one broadcast fit.
    """
    cpu = cpu or cpu_facts.host()
    lanes = cpu.lanes(dtype)
    registers = cpu.vector_registers
    vectors = min((v for v in (1, 2, 4) if v + 2 <= registers),
                  key=lambda v: (_round_up(positions, v * lanes), v))
    fitting = [r for r in range(1, min(channels, MAX_TILE_ROWS) + 1)
               if channels % r == 0 and r * vectors + vectors + 1 <= registers]
    return GemmTile(max(fitting, default=1), vectors, lanes)


def col_in_panels(taps: int, positions: int, dtype: str,
                  cpu: cpu_facts.CpuFacts | None = None) -> bool:
    """Whether an implicit GEMM's windows (``taps`` rows of ``positions``, per image) are
    copied a panel of positions at a time, just before the product reads it, rather than
    all at once per image: when the whole copy would be more than ``COL_L2_MULTIPLE`` times
    L2, it leaves the cache before the product reads it again for each tile of channels;
    with more than ``PANEL_MAX_TAPS`` taps, the panels' own copy (a gather across rows)
    cost more than that (measured)."""
    cpu = cpu or cpu_facts.host()
    return taps <= PANEL_MAX_TAPS \
        and taps * positions * np.dtype(dtype).itemsize > COL_L2_MULTIPLE * cpu.l2_bytes


def row_panel(taps: int, out_height: int, out_width: int, columns: int, dtype: str,
              cpu: cpu_facts.CpuFacts | None = None) -> int:
    """Output rows per panel of an implicit GEMM's windows copied a few whole rows at a
    time, or 0 where they are not: the fewest rows that are whole register tiles of
    ``columns`` positions and divide the output's height, where the whole copy per image
    would exceed ``ROW_PANEL_L2_MULTIPLE`` times L2."""
    cpu = cpu or cpu_facts.host()
    if taps * out_height * out_width * np.dtype(dtype).itemsize <= ROW_PANEL_L2_MULTIPLE \
            * cpu.l2_bytes:
        return 0
    return next((r for r in range(1, out_height + 1)
                 if (r * out_width) % columns == 0 and out_height % r == 0
                 and taps * r * out_width * np.dtype(dtype).itemsize <= cpu.l2_bytes), 0)


def direct_tile(channels: int, height: int, cpu: cpu_facts.CpuFacts | None = None
                ) -> tuple[int, int]:
    """``(channels, rows)`` of a direct convolution's register tile: each step loads one
    vector per row and broadcasts one filter tap per channel, so the tile with the most FMAs
    per load, of at most half the register file in accumulators (measured on znver4: 14
    accumulators ran LeNet's input gradient 1.5x faster than 21)."""
    registers = (cpu or cpu_facts.host()).vector_registers
    best, best_ratio = (1, 1), 0.0
    for c in range(1, channels + 1):
        for r in range(1, height + 1):
            if channels % c or height % r or c * r > registers // 2 \
                    or c * r + r + 2 > registers:
                continue
            ratio = c * r / (c + r)
            if ratio > best_ratio:
                best, best_ratio = (c, r), ratio
    return best


def weight_tile_rows(channels: int, kernel_width: int,
                     cpu: cpu_facts.CpuFacts | None = None) -> int:
    """Output channels per register tile of the weight adjoint: ``rows x kernel_width``
    accumulators plus ``rows + kernel_width`` loaded vectors within the register file."""
    registers = (cpu or cpu_facts.host()).vector_registers
    fitting = [r for r in range(1, channels + 1)
               if channels % r == 0 and r * kernel_width + r + kernel_width <= registers]
    return max(fitting, default=1)


def weight_partials(batch: int) -> tuple[int, int, int]:
    """``(partials, chunks per partial, images per chunk)``: one partial sum per thread
    (each a chunk's worth of images at least), the batch cut into chunks of at most
    ``WEIGHT_CHUNK_IMAGES``, as even as can be. The images past the batch are zeros that
    the kernel multiplies all the same: chunks of 16 for one image made LeNet-5's second
    weight gradient at batch 1 cost what it costs at batch 16 (133 us, one thread)."""
    chunks = -(-batch // WEIGHT_CHUNK_IMAGES)
    partials = max(1, min(available_cpus(), chunks))
    per_partial = -(-chunks // partials)
    return partials, per_partial, -(-batch // (partials * per_partial))


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def schedule_conv_gemm(sch: s_tir.Schedule) -> None:
    """Images in parallel; per image the padded copy and the windows in cache, then the
    product in register tiles whose write-back is the output block (with any epilogue)."""
    gemm = sch.get_sblock(GEMM_BLOCK)
    out = fold_epilogue(sch, gemm)
    stmt = sch.get(gemm)
    channels = int(stmt.iter_vars[1].dom.extent)
    out_height, out_width = (int(iv.dom.extent) for iv in sch.get(out).iter_vars[2:4])
    dtype = str(stmt.writes[0].source.dtype)
    # The product's positions and taps: as many elements as one image read in place.
    image_elements = int(np.prod([int(iv.dom.extent) for iv in stmt.iter_vars[2:]]))
    tile = gemm_tile(channels, out_height * out_width, dtype)
    if not _producers_of(sch, gemm):
        tile = streamed_tile(tile, channels, image_elements * np.dtype(dtype).itemsize)
    # The output block over flat positions, as the product is: its tile is then a plain
    # range of the product's, clipped to the real positions.
    sch.transform_block_layout(out, lambda b, o, i, j: (b, o, i * out_width + j))
    image, o, p, *reduction = sch.get_loops(gemm)
    o_outer, o_inner = sch.split(o, factors=[None, tile.rows])
    p_outer, p_vector, p_lane = sch.split(p, factors=[None, tile.vectors, tile.lanes])
    panels = [b for b in _producers_of(sch, gemm) if sch.get(b).name_hint == COL_PANELS]
    panel_size = int(sch.get(panels[0]).writes[0].source.shape[-1]) if panels else 0
    # Windows copied a panel at a time: each panel, in cache, meets every tile of channels
    # before the next is copied; else each tile of channels (its filters) meets every panel.
    outer = (p_outer, o_outer) if panels else (o_outer, p_outer)
    write_at = None
    if not _producers_of(sch, gemm) and images_pass_once(
            channels, tile.rows, image_elements * np.dtype(dtype).itemsize):
        outer = (p_outer, o_outer)
        chunks = reduction_chunks(_extent(sch, reduction[0]), channels, dtype)
        if chunks > 1:
            # Each chunk of the image's channels meets every tile of channels, accumulators
            # kept in the tile's local buffer between chunks (written back after the last).
            chunk, reduction[0] = sch.split(reduction[0], factors=[chunks, None])
            outer, write_at = (p_outer, chunk, o_outer), p_outer
    at_panel = p_outer
    if panel_size > tile.columns:
        at_panel, p_outer = sch.split(p_outer, factors=[None, panel_size // tile.columns])
        outer = (at_panel, o_outer, p_outer)
    sch.reorder(*outer, *reduction, o_inner, p_vector, p_lane)
    sch.set_scope(gemm, 0, "local")
    sch.reverse_compute_at(out, write_at or outer[-1], preserve_unit_loops=True)
    _schedule_write_back(sch, out, (out_height * out_width) % tile.columns == 0, tile.lanes)
    for panel in panels:
        sch.compute_at(panel, at_panel, preserve_unit_loops=True)
        if panel_size > tile.columns:
            # Whole output rows: each row of a tap's windows is a shifted image row (strided
            # with the convolution), a loop left to LLVM's vectoriser, which loads a strided
            # row as whole vectors and shuffles them where TVM's vector loop loads each lane
            # on its own (measured on znver4, one thread: ResNet-18's first layer 1.05x and
            # its 56 -> 28 one 1.02x faster so, its stride-1 layers as fast).
            sch.split(sch.get_loops(panel)[-1], factors=[None, out_width])
        else:
            vectorize_innermost(sch, panel)
    # Accumulators zeroed before the outermost reduction loop: the chunks' where split.
    _per_image(sch, gemm, image, (o_inner, p_vector), p_lane,
               outer[1] if write_at is not None else reduction[0])


def _schedule_write_back(sch: s_tir.Schedule, out, whole_tiles: bool, lanes: int) -> None:
    """The implicit GEMM's write-back of a register tile (``out``, at its tile)."""
    if whole_tiles:
        # Every tile whole: the write-back is whole vectors (a clipped one would be a masked
        # store, which the CPU backend scalarises).
        _, lane = sch.split(sch.get_loops(out)[-1], factors=[None, lanes])
        sch.vectorize(lane)
        # The tile's rows and vectors unrolled too: LLVM then keeps the accumulators in
        # registers from the product to the store, where a loop over them made it keep the
        # tile in a stack buffer as well, zeroed, stored and reloaded around every tile
        # (32 to 48 extra loads and stores per tile: measured on znver4, batch 32, one
        # thread, MobileNet v2's first convolution 11.2 -> 9.3 ms, its 16 -> 96 channel one
        # on 112 x 112 pixels 19.2 -> 13.8 ms, its 32 -> 192 one on 28 x 28 4.7 -> 3.7 ms;
        # with a few hundred taps per output, as fast as before).
        for loop in sch.get_loops(out)[-4:-1]:
            sch.unroll(loop)
    elif _binds_a_value(sch, out):
        # A clipped write-back whose epilogue binds a value (a clip's ``Let``): LLVM
        # vectorises its loop across channels with gathers and scatters (twice as slow as the
        # product, MobileNet v2's 14 x 14 pointwise layers with ReLU6); a row per channel,
        # unrolled, it writes each channel's positions in order (1.6x faster so; without a
        # bound value the loop's scalar stores stay the faster, 1.15x).
        sch.unroll(sch.get_loops(out)[-2])


def schedule_conv_direct(sch: s_tir.Schedule) -> None:
    """Images in parallel; per image the padded input, then register tiles of channels x
    rows, each row a vector along the (padded) output row; the copy to the output clips it."""
    direct = sch.get_sblock(DIRECT_BLOCK)
    out = fold_epilogue(sch, direct)
    image, channel, row, column, *reduction = sch.get_loops(direct)
    tile_c, tile_r = direct_tile(_extent(sch, channel), _extent(sch, row))
    c_outer, c_inner = sch.split(channel, factors=[None, tile_c])
    r_outer, r_inner = sch.split(row, factors=[None, tile_r])
    sch.reorder(c_outer, r_outer, *reduction, c_inner, r_inner, column)
    write_back = sch.cache_write(direct, 0, "local")
    sch.reverse_compute_at(write_back, r_outer, preserve_unit_loops=True)
    sch.reverse_compute_at(out, image, preserve_unit_loops=True)
    _per_image(sch, direct, image, (c_inner, r_inner), column, reduction[0])
    vectorize_innermost(sch, write_back)
    vectorize_innermost(sch, out)


_OPERAND_FIELDS = ("a", "b", "value", "body", "condition", "true_value", "false_value")


def _binds_a_value(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block``'s stored value binds a variable (a ``Let``, ``fastmath.bind``)."""
    def binds(node) -> bool:
        if isinstance(node, tirx.Let):
            return True
        operands = [getattr(node, field) for field in _OPERAND_FIELDS if hasattr(node, field)]
        operands += list(getattr(node, "args", ()))
        return any(binds(operand) for operand in operands
                   if isinstance(operand, tvm.ir.expr.Expr))

    return binds(sch.get(block).body.value)


def streamed_tile(tile: GemmTile, channels: int, image_bytes: int,
                  cpu: cpu_facts.CpuFacts | None = None) -> GemmTile:
    """The register tile of a GEMM reading its images in place where they stream from
    memory: where each tile of positions passes once through every tile of channels
    (``images_pass_once``'s images over half an L2, its few output channels), at most
    ``STREAMED_ROWS_SHARE`` of the registers in rows, else ``tile`` itself. Each reduction
    step loads a vector from another channel's plane, a cache miss there, and broadcasts a
    filter tap per row: with fewer rows more of a tile's misses fit the CPU's out-of-order
    window at once, and the next tile of channels finds the lines in L1. Measured on znver4,
    batch 32, one thread: MobileNet v2's 32 -> 16 channel layer on 112 x 112 pixels (1.6 MB
    images) 10.4 -> 6.5-8.0 ms with 8 rows rather than 16, its 96 -> 24 one on 56 x 56 6.5
    -> 5.7 ms, its 144 -> 24 one 10.0 -> 9.6 and its 192 -> 32 one on 28 x 28 4.5 -> 4.4 ms
    (8 rather than 12 and 16); 4 rows were no faster."""
    cpu = cpu or cpu_facts.host()
    if channels > PASS_ONCE_MAX_CHANNELS or 2 * image_bytes <= cpu.l2_bytes:
        return tile
    most = max(1, int(STREAMED_ROWS_SHARE * cpu.vector_registers) // tile.vectors)
    rows = max(r for r in range(1, min(most, tile.rows) + 1) if channels % r == 0)
    return GemmTile(rows, tile.vectors, tile.lanes)


def images_pass_once(channels: int, tile_rows: int, image_bytes: int,
                     cpu: cpu_facts.CpuFacts | None = None) -> bool:
    """Whether a GEMM reading its images in place (no copy of them) takes each tile of
    positions through every tile of channels before the next, rather than each tile of
    channels through every position: where an image (``image_bytes``) is more than half an
    L2, so that each tile of channels would read it again from further out, and the output
    has more than one tile but at most ``PASS_ONCE_MAX_CHANNELS`` channels, each written a
    tile of positions at a time. Measured on znver4, batch 32, one thread: MobileNet v2's
    144 -> 24 channel layer on 56 x 56 pixels 1.07-1.1x faster so, its 192 -> 32 one on 28 x
    28 1.2x, its 96 -> 24 one and its 144 -> 32 one on 28 x 28 (450 kB images) as fast; its
    16 -> 96 one on 112 x 112 1.1x slower."""
    cpu = cpu or cpu_facts.host()
    return tile_rows < channels <= PASS_ONCE_MAX_CHANNELS and 2 * image_bytes > cpu.l2_bytes


def reduction_chunks(channels_in: int, channels: int, dtype: str,
                     cpu: cpu_facts.CpuFacts | None = None) -> int:
    """How many equal chunks the image channels of a GEMM taking each tile of positions once
    (``images_pass_once``) are cut into: the fewest whose filters (every output channel's)
    and position vectors (one per image channel) fit L1 together. MobileNet v2's 192 -> 32
    channel layer on 28 x 28 pixels (37 kB of them) ran 1.05-1.15x faster in two chunks (one
    thread, znver4); its 144 -> 24 one (23 kB) 1.1x slower in two or three."""
    cpu = cpu or cpu_facts.host()
    per_channel = channels * np.dtype(dtype).itemsize + cpu.vector_bytes
    return next(c for c in range(1, channels_in + 1)
                if channels_in % c == 0 and channels_in // c * per_channel <= cpu.l1_bytes
                or c == channels_in)


def fold_epilogue(sch: s_tir.Schedule, block):
    """The block writing ``block``'s result to the output, with a fused epilogue's blocks
    (``compute.apply_epilogue``) folded into the last one, which then reads ``block``."""
    (out,) = sch.get_consumers(block)
    while sch.get_consumers(out):
        (consumer,) = sch.get_consumers(out)
        sch.compute_inline(out)
        out = consumer
    return out


def _per_image(sch: s_tir.Schedule, block, image, unrolled, lane, reduction) -> None:
    """The common end of both per-image schedules: ``block``'s producers (padding, windows)
    computed per image, images in parallel, the register tile unrolled and vectorised, and
    its accumulators zeroed before the reduction."""
    for producer in _producers_of(sch, block):
        if sch.get(producer).name_hint == COL_PANELS:
            continue  # already placed inside the image's loops
        sch.compute_at(producer, image, preserve_unit_loops=True)
        vectorize_innermost(sch, producer)
    if _extent(sch, image) > 1:
        sch.parallel(image)
    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(lane)
    sch.decompose_reduction(block, reduction)


def schedule_conv_weight(sch: s_tir.Schedule) -> None:
    """Partials in parallel, chunks of images in sequence inside each; per chunk the padded
    copies in cache and register tiles of ``rows`` channels by the filter's width."""
    chunk_block = sch.get_sblock(WEIGHT_BLOCK)
    (partial,) = sch.get_consumers(chunk_block)
    thread, *spatial, lane, chunk = sch.get_loops(partial)
    sch.reorder(thread, chunk, *spatial, lane)
    sch.parallel(thread)
    sch.compute_at(chunk_block, chunk, preserve_unit_loops=True)
    for producer in _producers_of(sch, chunk_block):
        sch.compute_at(producer, chunk, preserve_unit_loops=True)
        vectorize_innermost(sch, producer)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, chunk)
    stmt = sch.get(chunk_block)
    channels, kernel_width = (int(stmt.iter_vars[i].dom.extent) for i in (2, 5))
    rows = weight_tile_rows(channels, kernel_width)
    o, c, ry, rx, lane, *reduction = sch.get_loops(chunk_block)[-8:]
    o_outer, o_inner = sch.split(o, factors=[None, rows])
    sch.reorder(o_outer, c, ry, *reduction, o_inner, rx, lane)
    write_back = sch.cache_write(chunk_block, 0, "local")
    sch.reverse_compute_at(write_back, ry, preserve_unit_loops=True)
    sch.unroll(o_inner)
    sch.unroll(rx)
    sch.vectorize(lane)
    sch.decompose_reduction(chunk_block, reduction[0])
    sch.vectorize(sch.get_loops(write_back)[-1])


def _producers_of(sch: s_tir.Schedule, block) -> list:
    """Every block ``block`` depends on, nearest first."""
    found, frontier = [], [block]
    while frontier:
        producers = [p for b in frontier for p in sch.get_producers(b)]
        found += producers
        frontier = producers
    unique = []
    for producer in found:
        if not any(sch.get(producer).same_as(sch.get(u)) for u in unique):
            unique.append(producer)
    return unique


def vectorize_innermost(sch: s_tir.Schedule, block) -> None:
    loops = sch.get_loops(block)
    if loops and _extent(sch, loops[-1]) > 1:
        sch.vectorize(loops[-1])
