"""The tuned CPU schedule of the ``matmul`` block, and the per-shape choice of its tiles.

The loop nest it builds, for ``C = op(A) @ op(B)`` of shape (M, N) with reduction K::

    Bp[N/nr, K, nr] = pack(B)                    # once per call (or B read in place, or
                                                 # packed ahead when constant); contiguous panels
    parallel for (jc, io) in (N/nc, M/mr):       # jc: a K x nc slab of Bp that stays in L2
        Ap[K, mr] = pack(rows io of A)           # the broadcast operand, contiguous along k
        for jo in nc/nr:
            acc[mr, nr] = 0                      # mr * nr/lanes vector registers
            for k in K:
                acc[:, :] += Ap[k, :, None] * Bp[jo, k, None, :]   # FMAs, nr vectorised
            C[tile] = epilogue(acc)              # trailing elementwise blocks fused here

With ``vec_m`` the tile is turned around for narrow outputs: vectors run along the mr rows
(from Ap) and the nr columns of Bp are broadcast.

Edges are padded (``pad_einsum``) up to whole register tiles, so the inner loops never test
bounds; only the write-back of a tile is clipped to (M, N). ``apply_config`` builds this nest
for given tiles (``dlsys.kernels.matmul.search`` chooses them); ``schedule_gemv`` serves a
matrix-vector product and ``schedule_matmul`` is the untiled fallback for any other shape.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from dlsys.kernels.common.loops import (
    PARALLEL_MIN_ELEMENTS,
    VECTOR_LANES,
    all_blocks,
    loop_extent,
    vectorize_and_parallelize,
)
from dlsys.kernels.matmul.compute import MATMUL_TILES_ATTR, ROWS_VIEW_SUFFIX
from dlsys.kernels.matmul.config import MatmulConfig, MatmulProblem, _round_up

BLOCK = "matmul"
# Below this many multiply-adds, waking the thread pool costs more than the work it shares.
PARALLEL_MIN_MACS = 1 << 18
# An output this large is written by both cores however few its multiply-adds: a weight's
# gradient at batch 1 is an outer product, whose work is the writing. Its row tiles then
# lie in the caches of the cores that the optimiser's update, split by rows alike, runs on;
# written by one core, half of them crossed to the other core at the update (the MLP's
# 256 x 784 gradient: SGD steps of 88-93 us against 51-58 us split, 2 threads, znver4).
PARALLEL_MIN_OUTPUTS = 1 << 16


def matmul_problem(sch: s_tir.Schedule) -> MatmulProblem:
    """Read sizes, transposes and dtype off the ``matmul`` block (ValueError if it is not one)."""
    block = sch.get(sch.get_sblock(BLOCK))
    body = block.body
    if ([int(iv.iter_type) for iv in block.iter_vars] != [0, 0, 2]  # spatial i, j; reduce k
            or len(block.reads) != 2 or len(block.writes) != 1
            or not isinstance(body, tvm.tirx.BufferStore)
            or not isinstance(body.value, tvm.tirx.Add)
            or not isinstance(body.value.b, tvm.tirx.Mul)):
        raise ValueError(f"block {BLOCK!r} is not a plain matmul")
    var_i, var_j, var_k = (iv.var for iv in block.iter_vars)
    m, n, k = (int(iv.dom.extent) for iv in block.iter_vars)
    transposed = {}
    for region in block.reads:
        if len(region.region) != 2:
            raise ValueError(f"block {BLOCK!r} reads {region.source.name} with "
                             f"{len(region.region)} indices")
        first, second = (r.min for r in region.region)
        for name, row, col in (("a", var_i, var_k), ("b", var_k, var_j)):
            if first.same_as(row) and second.same_as(col):
                transposed[name] = False
            elif first.same_as(col) and second.same_as(row):
                transposed[name] = True
    if set(transposed) != {"a", "b"}:
        raise ValueError(f"block {BLOCK!r} does not read A[i, k] and B[k, j]")
    return MatmulProblem(m, n, k, transposed["a"], transposed["b"],
                         str(block.writes[0].source.dtype))


def _operand_index(sch: s_tir.Schedule, block, outer_var_pos: int) -> int:
    """Position in the block's reads of the operand indexed by iter var ``outer_var_pos``."""
    stmt = sch.get(block)
    var = stmt.iter_vars[outer_var_pos].var
    for index, region in enumerate(stmt.reads):
        if any(r.min.same_as(var) for r in region.region):
            return index
    raise ValueError(f"block {BLOCK!r} has no operand indexed by {var}")


def _pack(sch: s_tir.Schedule, block, read_index: int, outer_first: bool, tile: int,
          pad_blocks: set[str]):
    """Copy one operand into panels ``[outer // tile, k, outer % tile]``; returns the copy block.

    ``outer`` is the operand's non-reduction axis (i for A, j for B) and ``outer_first`` says
    whether it is stored first. Panels make the ``tile`` values used at each k adjacent,
    whatever the stored order, so a transposed operand costs no more than a plain one.
    """
    packed = sch.cache_read(block, read_index, "global")
    for producer in sch.get_producers(packed):
        if sch.get(producer).name_hint in pad_blocks:
            sch.compute_inline(producer)
    if outer_first:
        def layout(outer, kk):
            return (outer // tile, kk, outer % tile)
    else:
        def layout(kk, outer):
            return (outer // tile, kk, outer % tile)
    sch.transform_layout(packed, ("write", 0), layout)
    return packed


def _fuse_epilogues(sch: s_tir.Schedule, write_back) -> list:
    """Inline trailing elementwise blocks into the tile's write-back; returns those left over."""
    while True:
        consumers = sch.get_consumers(write_back)
        for consumer in consumers:
            try:
                sch.reverse_compute_inline(consumer)
                break
            except s_tir.ScheduleError:
                continue
        else:
            return consumers


def apply_config(sch: s_tir.Schedule, problem: MatmulProblem, config: MatmulConfig) -> None:
    """Schedule the ``matmul`` block (and any elementwise blocks after it) with ``config``.

    For ``problem.b_prepacked`` the function is ``compute.matmul_prepacked``, which reads B
    already in panels and brings its own padded blocks, so B is neither padded nor packed.
    """
    if not config.fits(problem):
        raise ValueError(f"config {config} does not fit {problem}")
    block = sch.get_sblock(BLOCK)
    m_pad, n_pad = _round_up(problem.m, config.mr), _round_up(problem.n, config.nr)
    padded = (m_pad, n_pad) != (problem.m, problem.n)
    pad_blocks = _pad_to_tiles(sch, block, problem, config, m_pad, n_pad)
    packed_a, packed_b = _pack_operands(sch, block, problem, config, m_pad, pad_blocks)
    _inline_rows_view(sch)
    write_back, leftovers = _make_write_back(sch, block, config, padded, pad_blocks)
    jc, io, jo, k, ii, ji = _tile_loops(sch, block, config)
    _place_in_tile(sch, jo, write_back, leftovers)
    if packed_a is not None:
        _schedule_pack_a(sch, packed_a, io, problem, config, n_pad)
    _vectorize(sch, ji)
    sch.unroll(ii)
    outer = sch.fuse(jc, io)
    if problem.macs >= PARALLEL_MIN_MACS or problem.m * problem.n >= PARALLEL_MIN_OUTPUTS:
        sch.parallel(outer)
    sch.decompose_reduction(block, k)
    if not config.vec_m:
        _vectorize_write_back(sch, write_back, jo, problem, config.nr, n_pad)
    if packed_b is not None:
        _schedule_pack_root(sch, packed_b, problem.trans_b, config.nr, problem)


def _pad_to_tiles(sch: s_tir.Schedule, block, problem: MatmulProblem, config: MatmulConfig,
                  m_pad: int, n_pad: int) -> set[str]:
    """Pad the product up to whole register tiles; returns the names of the padding blocks."""
    root = sch.get_sblock("root")
    before = {sch.get(b).name_hint for b in sch.get_child_blocks(root)}
    if problem.b_prepacked:
        return before & PREPACKED_PAD_BLOCKS
    if (m_pad, n_pad) != (problem.m, problem.n):
        sch.pad_einsum(block, [config.mr if m_pad != problem.m else 1,
                               config.nr if n_pad != problem.n else 1, 1])
    return {sch.get(b).name_hint for b in sch.get_child_blocks(root)} - before


def _pack_operands(sch: s_tir.Schedule, block, problem: MatmulProblem, config: MatmulConfig,
                   m_pad: int, pad_blocks: set[str]) -> tuple:
    """Decide which operands are copied into panels; returns the copies ``(A, B)`` or None."""
    packed_b = None
    if not problem.b_prepacked and config.pack_b:
        packed_b = _pack(sch, block, _operand_index(sch, block, 1), problem.trans_b, config.nr,
                         pad_blocks)
    packed_a = None
    if config.pack_a or config.vec_m or m_pad != problem.m:
        packed_a = _pack(sch, block, _operand_index(sch, block, 0), not problem.trans_a,
                         config.mr, pad_blocks)
    return packed_a, packed_b


def _inline_rows_view(sch: s_tir.Schedule) -> None:
    """Read the rows of an operand of rank >= 3 where they lie: its ``*_rows`` index map
    (``compute``) joins its readers (the panels, or the product itself): nothing is copied."""
    for block in all_blocks(sch):
        if sch.get(block).name_hint.endswith(ROWS_VIEW_SUFFIX):
            sch.compute_inline(block)


def _make_write_back(sch: s_tir.Schedule, block, config: MatmulConfig, padded: bool,
                     pad_blocks: set[str]) -> tuple:
    """Decide which block writes the register tile back; returns it and the unfused epilogues."""
    if padded:
        # The padded product is followed by a block copying it out (pad_einsum's, or
        # matmul_prepacked's crop); making the product local turns that copy into the
        # register tile's write-back.
        write_back = next(c for c in sch.get_consumers(block)
                          if sch.get(c).name_hint in pad_blocks)
        sch.set_scope(block, 0, "local")
    else:
        write_back = sch.cache_write(block, 0, "local")
    leftovers = _fuse_epilogues(sch, write_back)
    if config.vec_m:
        # Accumulator rows adjacent, so each row vector is one register, not a gather.
        sch.transform_layout(block, ("write", 0), lambda ri, cj: (cj, ri))
    return write_back, leftovers


def _tile_loops(sch: s_tir.Schedule, block, config: MatmulConfig) -> tuple:
    """Decide the loop order of the tiled product; returns ``(jc, io, jo, k, ii, ji)``.

    ``ji`` is always the vectorised loop and ``ii`` the unrolled one, whichever way round.
    """
    i, j, k = sch.get_loops(block)
    io, ii = sch.split(i, factors=[None, config.mr])
    jc, jo, ji = sch.split(j, factors=[None, config.nc // config.nr, config.nr])
    if config.vec_m:
        sch.reorder(jc, io, jo, k, ji, ii)
        ii, ji = ji, ii  # from here on: ji is the vectorised loop, ii the unrolled one
    else:
        sch.reorder(jc, io, jo, k, ii, ji)
    return jc, io, jo, k, ii, ji


def _place_in_tile(sch: s_tir.Schedule, jo, write_back, leftovers: list) -> None:
    """Decide where the write-back and the unfused epilogues run: inside each column tile."""
    # Unit loops are kept so that a block's last two loops are always its own.
    sch.reverse_compute_at(write_back, jo, preserve_unit_loops=True)
    for leftover in leftovers:
        try:
            sch.reverse_compute_at(leftover, jo, preserve_unit_loops=True)
        except s_tir.ScheduleError:
            pass  # left at the root: correct, only not fused into the tile


def _schedule_pack_a(sch: s_tir.Schedule, packed_a, io, problem: MatmulProblem,
                     config: MatmulConfig, n_pad: int) -> None:
    """Decide where A's panels are packed: once whole, or per row tile inside the product."""
    if config.nc < n_pad:
        # B comes in several slabs, each of which meets every row panel of A: pack A once,
        # whole, rather than once per slab (a K x mr panel per row tile streams by).
        _schedule_pack_root(sch, packed_a, not problem.trans_a, config.mr, problem)
        return
    sch.compute_at(packed_a, io, preserve_unit_loops=True)
    first, last = sch.get_loops(packed_a)[-2:]
    if problem.trans_a:
        _vectorize(sch, last)  # (k, rows): a panel row is one vector copy
    else:
        # (rows, k) would store with stride mr, which LLVM vectorises into scatters;
        # walking k outside the rows stores each panel row contiguously.
        sch.reorder(last, first)
        sch.unroll(first)


def _vectorize_write_back(sch: s_tir.Schedule, write_back, jo, problem: MatmulProblem,
                          nr: int, n_pad: int) -> None:
    """Decide how a column tile is stored: whole vectors, the clipped last tile peeled off."""
    lanes_loop = sch.get_loops(write_back)[-1]
    if n_pad != problem.n:
        # A clipped tile would need masked stores, which the CPU backend scalarises: peel
        # off the last column tile, and within it the last partial vector, so that every
        # other store stays one vector.
        sch.annotate(jo, "pragma_loop_partition_hint", 1)
        if nr > problem.lanes and nr % problem.lanes == 0:
            vectors, lanes_loop = sch.split(lanes_loop, factors=[None, problem.lanes])
            sch.annotate(vectors, "pragma_loop_partition_hint", 1)
    _vectorize(sch, lanes_loop)


def _vectorize(sch: s_tir.Schedule, loop) -> None:
    if int(sch.get(loop).extent) > 1:
        sch.vectorize(loop)


def _schedule_pack_root(sch: s_tir.Schedule, packed, outer_first: bool, tile: int,
                        problem: MatmulProblem) -> None:
    """Loops of an operand packed whole, before the product. Stored k-major, its loops are
    ``(k, outer)``, contiguous within each panel: a panel row is one vector copy. Stored
    outer-major (a transposed B, a plain A), ``(outer, k)`` would store with stride ``tile``,
    which LLVM vectorises into scatters; ``(panel, k, outer % tile)`` stores each panel row
    contiguously."""
    loops = sch.get_loops(packed)
    elements = int(sch.get(loops[0]).extent) * int(sch.get(loops[1]).extent)
    if not outer_first:
        _, lane = sch.split(loops[1], factors=[None, tile])
        _vectorize(sch, lane)
        parallel = loops[0]
    else:
        parallel, within = sch.split(loops[0], factors=[None, tile])
        sch.reorder(parallel, loops[1], within)
        sch.unroll(within)
    if elements >= PARALLEL_MIN_MACS // 16:
        sch.parallel(parallel)



def inline_epilogue(sch: s_tir.Schedule):
    """Inline every elementwise block after "matmul" into the last one; return that block.

    Fused kernels (``compute.matmul_epilogue``) chain elementwise blocks after the product;
    folding the chain into one block leaves the matmul schedule a single consumer to place.
    """
    blocks = all_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if names[-1] == "matmul":
        return None
    for block in blocks[names.index("matmul") + 1:-1]:
        sch.compute_inline(block)
    return all_blocks(sch)[-1]


# Output columns per step of the matrix-vector product: two rows of B share each load of A.
GEMV_ROWS = 2
# A matrix-vector product reads all of B once: split between cores, each half stays in a
# core's L2 from call to call (1x784 by 784x256: 17 us on one core, 5 us on two, znver4).
GEMV_PARALLEL_MIN_MACS = 1 << 14

def schedule_gemv(sch: s_tir.Schedule, problem: MatmulProblem, lanes: int) -> None:
    """``C[0, j] = A[0, :] . B[j, :]`` without packing: each vector lane keeps a partial dot
    product along k (``rfactor``), two rows of B per step, output columns in parallel; the
    lanes are added and the epilogue applied per group of columns. Packing B, as the tiled
    schedule does, costs more than the product here (1x784 by 784x256: 91 us packed and
    tiled, 5 us this way, on znver4)."""
    block = sch.get_sblock(BLOCK)
    epilogue = inline_epilogue(sch)
    _, j, k = sch.get_loops(block)
    _, lane = sch.split(k, factors=[None, lanes])
    partial = sch.rfactor(lane, factor_axis=2)
    _, columns, steps, lane = sch.get_loops(partial)
    rows = GEMV_ROWS if problem.n % GEMV_ROWS == 0 else 1
    outer, inner = sch.split(columns, factors=[None, rows])
    sch.reorder(outer, steps, inner, lane)
    if problem.n * problem.k >= GEMV_PARALLEL_MIN_MACS:
        sch.parallel(outer)
    sch.reverse_compute_at(sch.get_sblock(BLOCK), outer, preserve_unit_loops=True)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, outer, preserve_unit_loops=True)
    sch.unroll(inner)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, steps)



# The blocks compute.matmul_prepacked brings where pad_einsum would make them.
PREPACKED_PAD_BLOCKS = frozenset({"A_pad", "matmul_crop"})


def schedule_matmul_prepacked(sch: s_tir.Schedule) -> None:
    """``compute.matmul_prepacked`` with the tiles its B was packed for: the tuned schedule
    without B's padding and packing (``apply_config`` of a ``b_prepacked`` problem)."""
    block = sch.get_sblock(BLOCK)
    stmt = sch.get(block)
    m, n, k, trans_a, trans_b, mr, nr, nc, pack_a, vec_m = (
        int(v) for v in stmt.annotations[MATMUL_TILES_ATTR])
    sch.unannotate(block, MATMUL_TILES_ATTR)
    problem = MatmulProblem(m, n, k, bool(trans_a), bool(trans_b),
                            str(stmt.writes[0].source.dtype), b_prepacked=True)
    apply_config(sch, problem, MatmulConfig(mr, nr, nc, bool(pack_a), bool(vec_m)))


def schedule_matmul(sch: s_tir.Schedule) -> None:
    """Baseline register tiling for ``C[i, j] = sum_k A[i, k] B[k, j]``.

    Tiles of 4 rows by 16 columns are kept in registers across ``k``; the column tile is
    vectorised and the row tiles run in parallel. ``apply_config`` is the tuned schedule
    that packs operands; this one is the fallback for any shape.
    """
    block = sch.get_sblock(BLOCK)
    epilogue = inline_epilogue(sch)
    if epilogue is not None:
        # The baseline keeps the epilogue as its own elementwise pass inside the kernel.
        vectorize_and_parallelize(sch, sch.fuse(*sch.get_loops(epilogue)))
    i, j, k = sch.get_loops(block)
    m, n = loop_extent(sch, i), loop_extent(sch, j)
    tile_i = 4 if m >= 4 else 1
    tile_j = VECTOR_LANES if n >= VECTOR_LANES else n
    io, ii = sch.split(i, factors=[None, tile_i])
    jo, ji = sch.split(j, factors=[None, tile_j])
    sch.reorder(io, jo, k, ii, ji)
    sch.vectorize(ji)
    sch.unroll(ii)
    if m * n >= PARALLEL_MIN_ELEMENTS // 4:
        sch.parallel(sch.fuse(io, jo))
    sch.decompose_reduction(block, k)
