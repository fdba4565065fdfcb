"""The tuned CPU schedule of the batched product (``compute.batched_matmul``): a stack of
small matrix products, such as attention's (B*H, T, D) x (B*H, D, T).

Each matrix of the stack is a problem of the 2-D product's kind, and gets the register
tile its heuristic ranks best (``config.candidate_configs``); the batch is the parallel
loop, so one matrix's operands stay in one core's caches::

    parallel for b in batch:                   # all batch axes fused
        Bp[N/nr, K, nr] = pack(B[b])           # where B is transposed or padded
        for io in M/mr:
            Ap[K, mr] = pack(A[b] rows io)     # only where M needs padding
            for jo in N/nr:
                acc[mr, nr] = 0
                for k in K: acc += A[b][i, k] * Bp[jo, k, :]   # nr vectorised
                C[b][tile] = epilogue(acc)

A batch smaller than the thread count shares its row tiles between cores instead. A
product summed over batch axes (``schedule_summed_matmul``, a gradient) keeps the output's
batch outside and the summed matrices inside the tile, accumulated in registers like k.
"""

from __future__ import annotations

import os

from tvm import s_tir

from dlsys.kernels.matmul.compute import BATCHED_ATTR, BATCHED_BLOCK
from dlsys.kernels.matmul.config import MatmulConfig, MatmulProblem, _round_up, candidate_configs
from dlsys.kernels.matmul.schedule import (
    PARALLEL_MIN_MACS,
    _make_write_back,
    _place_in_tile,
    _vectorize,
)


def batched_problem(sch: s_tir.Schedule) -> tuple[MatmulProblem, int]:
    """The problem one matrix of the stack poses, and how many matrices the stack holds."""
    stmt = sch.get(sch.get_sblock(BATCHED_BLOCK))
    m, n, k, trans_a, trans_b, _ = (int(v) for v in stmt.annotations[BATCHED_ATTR])
    batch = 1
    for iv in stmt.iter_vars[:-3]:
        batch *= int(iv.dom.extent)
    return MatmulProblem(m, n, k, bool(trans_a), bool(trans_b),
                         str(stmt.writes[0].source.dtype)), batch


def batched_config(problem: MatmulProblem) -> MatmulConfig:
    """The register tile for each matrix: the 2-D heuristic's favourite with columns as the
    vectors (this nest has no row-vector variant and no L2 slabs: one matrix's B is small)."""
    return next((c for c in candidate_configs(problem, limit=16) if not c.vec_m),
                MatmulConfig(1, 1, 1))


def _pack(sch: s_tir.Schedule, block, read_index: int, outer_first: bool, tile: int,
          inline: set[str]):
    """Copy one operand into panels ``[..., outer // tile, k, outer % tile]`` per matrix of
    the stack (``outer`` is i for A, j for B); its padding blocks are inlined into the copy."""
    packed = sch.cache_read(block, read_index, "global")
    for producer in sch.get_producers(packed):
        if sch.get(producer).name_hint in inline:
            sch.compute_inline(producer)

    def layout(*index):
        *batch, first, second = index
        outer, kk = (first, second) if outer_first else (second, first)
        return (*batch, outer // tile, kk, outer % tile)

    sch.transform_layout(packed, ("write", 0), layout)
    return packed


def _read_index(sch: s_tir.Schedule, block, operand: str) -> int:
    """Position in the block's reads of A or B (the padded copies keep their names' start)."""
    names = [region.source.name for region in sch.get(block).reads]
    return next(i for i, name in enumerate(names) if name.split("_")[0] == operand)


def _place_pack(sch: s_tir.Schedule, packed, loop, contiguous_last: bool) -> None:
    """Copy one panel set under ``loop``, storing whole vectors where the source allows."""
    sch.compute_at(packed, loop, preserve_unit_loops=True)
    first, last = sch.get_loops(packed)[-2:]
    if contiguous_last:
        _vectorize(sch, last)
    else:
        # A source stored along the panel's outer axis would store with stride ``tile``:
        # walking k outside stores each panel row contiguously.
        sch.reorder(last, first)
        sch.unroll(first)


def schedule_batched_matmul(sch: s_tir.Schedule) -> None:
    """Schedule ``compute.batched_matmul`` (and its epilogue) as the module docstring says."""
    block = sch.get_sblock(BATCHED_BLOCK)
    problem, batch = batched_problem(sch)
    sch.unannotate(block, BATCHED_ATTR)
    config = batched_config(problem)
    mr, nr = config.mr, config.nr
    m_pad, n_pad = _round_up(problem.m, mr), _round_up(problem.n, nr)
    padded = (m_pad, n_pad) != (problem.m, problem.n)
    packed_a, packed_b, pad_blocks = _pad_and_pack(sch, block, problem, mr, nr)
    write_back, leftovers = _make_write_back(sch, block, config, padded, pad_blocks)
    outer, i, j, k = sch.get_loops(block)[0], *sch.get_loops(block)[-3:]
    axes = sch.get_loops(block)[:-3]
    b = sch.fuse(*axes) if len(axes) > 1 else outer
    io, ii = sch.split(i, factors=[None, mr])
    jo, ji = sch.split(j, factors=[None, nr])
    sch.reorder(b, io, jo, k, ii, ji)
    _place_in_tile(sch, jo, write_back, leftovers)
    if packed_a is not None:
        _place_pack(sch, packed_a, io, problem.trans_a)
    # Matrices enough for every thread to get a few (the pool's size, which dlsys.kernels
    # sets): each takes whole matrices.
    per_batch = batch >= 2 * int(os.environ.get("TVM_NUM_THREADS", "1"))
    if packed_b is not None:
        _place_pack(sch, packed_b, b, not problem.trans_b)
        per_batch = True  # B's panels are made once per matrix, at the top of its loop
    _vectorize(sch, ji)
    sch.unroll(ii)
    if problem.macs * batch >= PARALLEL_MIN_MACS:
        sch.parallel(b if per_batch else sch.fuse(b, io))
    sch.decompose_reduction(block, k)
    _vectorize(sch, sch.get_loops(write_back)[-1])


def _pad_and_pack(sch: s_tir.Schedule, block, problem: MatmulProblem, mr: int,
                  nr: int, summed: int = 0) -> tuple:
    """Pad each matrix's product to whole register tiles, and decide which operands are
    copied into panels: B where it is transposed or padded (its columns must be
    contiguous), A where it is padded. Returns the copies (or None) and the pad blocks."""
    m_pad, n_pad = _round_up(problem.m, mr), _round_up(problem.n, nr)
    root = sch.get_sblock("root")
    before = {sch.get(b).name_hint for b in sch.get_child_blocks(root)}
    if (m_pad, n_pad) != (problem.m, problem.n):
        axes = len(sch.get(block).iter_vars) - 3 - summed
        sch.pad_einsum(block, [1] * axes + [mr if m_pad != problem.m else 1,
                                            nr if n_pad != problem.n else 1]
                       + [1] * (summed + 1))
    pad_blocks = {sch.get(b).name_hint for b in sch.get_child_blocks(root)} - before
    packed_a = packed_b = None
    if problem.trans_b or n_pad != problem.n:
        packed_b = _pack(sch, block, _read_index(sch, block, "B"), problem.trans_b, nr,
                         pad_blocks)
    if m_pad != problem.m:
        packed_a = _pack(sch, block, _read_index(sch, block, "A"), not problem.trans_a, mr,
                         pad_blocks)
    return packed_a, packed_b, pad_blocks


def schedule_summed_matmul(sch: s_tir.Schedule) -> None:
    """A batched product summed over some batch axes (the gradient of an operand broadcast
    along them): the register tile accumulates across the summed matrices as it does along
    k, so each output tile is stored once; operands that need panels are packed whole,
    ahead of the product, since every output tile reads several matrices of them."""
    block = sch.get_sblock(BATCHED_BLOCK)
    stmt = sch.get(block)
    m, n, k, trans_a, trans_b, summed = (int(v) for v in stmt.annotations[BATCHED_ATTR])
    sch.unannotate(block, BATCHED_ATTR)
    problem = MatmulProblem(m, n, k, bool(trans_a), bool(trans_b),
                            str(stmt.writes[0].source.dtype))
    config = batched_config(problem)
    m_pad, n_pad = _round_up(m, config.mr), _round_up(n, config.nr)
    packed = _pad_and_pack(sch, block, problem, config.mr, config.nr, summed)
    write_back, leftovers = _make_write_back(sch, block, config, (m_pad, n_pad) != (m, n),
                                             packed[2])
    loops = sch.get_loops(block)
    kept = loops[:len(loops) - 3 - summed]
    i, j, *reduced = loops[len(kept):]
    io, ii = sch.split(i, factors=[None, config.mr])
    jo, ji = sch.split(j, factors=[None, config.nr])
    outer = [sch.fuse(*kept) if len(kept) > 1 else kept[0]] if kept else []
    sch.reorder(*outer, io, jo, *reduced, ii, ji)
    _place_in_tile(sch, jo, write_back, leftovers)
    for copy in packed[:2]:
        if copy is not None:
            first = sch.get_loops(copy)[0]
            sch.parallel(first)
    _vectorize(sch, ji)
    sch.unroll(ii)
    sch.parallel(sch.fuse(*outer, io) if outer else io)
    sch.decompose_reduction(block, reduced[0])
    _vectorize(sch, sch.get_loops(write_back)[-1])


def schedule_batched(sch: s_tir.Schedule) -> None:
    """The tuned batched schedule (summed over batch axes or not), tried on a copy first;
    where a primitive refuses it, TVM's default nest with its outermost loop shared between
    cores."""
    block = sch.get_sblock(BATCHED_BLOCK)
    summed = int(sch.get(block).annotations[BATCHED_ATTR][-1])
    schedule = schedule_summed_matmul if summed else schedule_batched_matmul
    try:
        schedule(sch.copy())
    except (RuntimeError, ValueError, StopIteration):
        sch.unannotate(block, BATCHED_ATTR)
        first = sch.get_loops(block)[0]
        if int(sch.get(first).extent) > 1:
            sch.parallel(first)
        return
    schedule(sch)
