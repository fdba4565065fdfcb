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
bounds; only the write-back of a tile is clipped to (M, N). Tile sizes come from, in order,
the user's tuning log, the table shipped for known CPUs, a short search timed on this
machine (its winner is logged), or ``heuristic_config`` when ``DLSYS_TUNE=0``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import tvm
from tvm import s_tir

from dlsys.kernels import compute, tuning
from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.cpu import CpuFacts

BLOCK = "matmul"
LOG_KIND = "matmul"
# Below this many multiply-adds, waking the thread pool costs more than the work it shares.
PARALLEL_MIN_MACS = 1 << 18
# Below this a product runs in under 0.1 ms (200 GFLOPS): a search of 0.7 s or more would
# take hundreds of thousands of calls to repay a 10 % gain, so the heuristic's tiles serve.
SEARCH_MIN_MACS = 1 << 24
SEARCH_CANDIDATES = 4
# A packed element (a scalar load and store) costs about as long as this many multiply-adds
# inside the vectorised FMA loop; used to rank tiles that pad A against those that do not.
PACK_COST_MACS = 8
MAX_TILE = 64
# The smallest per-core L2 of the x86 CPUs in use (Skylake client: 256 KiB).
MIN_L2_BYTES = 256 * 1024


@dataclass(frozen=True)
class MatmulProblem:
    """What decides the best tiles: ``C[m, n] = sum_k op(A)[m, k] op(B)[k, n]``."""

    m: int
    n: int
    k: int
    trans_a: bool
    trans_b: bool
    dtype: str
    # The CPU the tiles are for: its vector width, register file and L2 (this machine's
    # unless a test or a table names another).
    cpu: CpuFacts = field(default_factory=cpu_facts.host)
    # B arrives packed in panels (``compute.matmul_prepacked``, a constant packed once), so
    # a call copies at most A: the best tiles differ from those of a call packing B too.
    b_prepacked: bool = False

    def key(self, cpu: str | None = None) -> str:
        """The tuning-log key: CPU, dtype, sizes, transposes, and ``pb1`` for a packed B."""
        return (f"{cpu or self.cpu.name}/{self.dtype}/m{self.m}n{self.n}k{self.k}"
                f"/ta{int(self.trans_a)}tb{int(self.trans_b)}"
                + ("pb1" if self.b_prepacked else ""))

    @property
    def l2_budget_bytes(self) -> int:
        """Half the L2: room for the B slab plus the A panel and C tiles streaming by."""
        return self.cpu.l2_bytes // 2

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    @property
    def lanes(self) -> int:
        return self.cpu.lanes(self.dtype)

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The stored shapes of A and B (transposed operands are stored transposed)."""
        shape_a = (self.k, self.m) if self.trans_a else (self.m, self.k)
        shape_b = (self.n, self.k) if self.trans_b else (self.k, self.n)
        return shape_a, shape_b


@dataclass(frozen=True)
class MatmulConfig:
    """Tile sizes: ``mr`` x ``nr`` register tile, ``nc`` columns per L2 slab, A packed or not,
    B packed or read where it is stored (``pack_b=False``: an untransposed B whose rows hold
    whole column tiles, streamed with stride N instead of copied).

    ``vec_m`` vectorises the tile along its rows instead of its columns (A's packed panel
    supplies the vectors, B is broadcast): for a narrow output such as N = 10, where column
    vectors would pad 10 to 16, rows are plentiful and need no padding.
    """

    mr: int
    nr: int
    nc: int
    pack_a: bool = True
    vec_m: bool = False
    pack_b: bool = True

    def tiles(self) -> tuple:
        """The config as ``compute.matmul_prepacked`` takes it (a kernel spec parameter)."""
        return (self.mr, self.nr, self.nc, self.pack_a, self.vec_m)

    @classmethod
    def from_json(cls, record: dict, problem: MatmulProblem) -> MatmulConfig | None:
        """The config a log record holds, or ``None`` if it is malformed or does not fit."""
        try:
            sizes = [record[name] for name in ("mr", "nr", "nc")]
            flags = [record.get("pack_a", True), record.get("vec_m", False),
                     record.get("pack_b", True)]
        except (KeyError, TypeError):
            return None
        if not all(type(v) is int for v in sizes) or not all(type(f) is bool for f in flags):
            return None
        config = cls(*sizes, *flags)
        return config if config.fits(problem) and config._search_shaped(problem) else None

    def fits(self, problem: MatmulProblem) -> bool:
        """Whether the tiles divide the padded problem, as the schedule requires."""
        n_pad = _round_up(problem.n, self.nr) if self.nr > 0 else 0
        # B read in place: its rows must hold whole column tiles, unpadded, along j.
        b_in_place = (self.pack_b or not problem.b_prepacked and not problem.trans_b
                      and not self.vec_m and problem.n % self.nr == 0)
        # The bounds keep a hand-edited log from asking for a tile that unrolls into
        # thousands of instructions.
        return (0 < self.mr <= min(problem.m, MAX_TILE) and 0 < self.nr <= MAX_TILE
                and 0 < self.nc and self.nc % self.nr == 0 and n_pad % self.nc == 0
                and b_in_place)

    def _search_shaped(self, problem: MatmulProblem) -> bool:
        """Whether a logged config (which fits) is one the search could have logged, or a tile
        of the same kind: legal tiles can still be pathological (1 x 1 runs a matmul about 70x
        slower than the tuned tile), and a log is a file anyone with access can edit."""
        if self in candidate_configs(problem, limit=64):
            return True
        lanes = problem.lanes
        if self.vec_m:
            # Row vectors come from the packed copy of A, in whole vectors.
            vectors, broadcast, extent = self.mr // lanes, self.nr, problem.n
            whole = self.mr % lanes == 0 and self.pack_a
        else:
            # Whole column vectors, or all of an output narrower than one; padded rows only
            # exist in the packed copy of A.
            vectors, broadcast, extent = -(-self.nr // lanes), self.mr, problem.m
            whole = ((self.nr % lanes == 0 or self.nr == problem.n < lanes)
                     and (self.pack_a or problem.m % self.mr == 0))
        accumulators = vectors * broadcast
        # As in cpu.TILE_SHAPES: accumulators, the loaded vectors and a broadcast within the
        # register file, and at least two independent accumulators where the output allows.
        registers_ok = (accumulators + vectors + 1 <= problem.cpu.vector_registers
                        and accumulators >= min(2, extent))
        # B's slab is whole, or no narrower than the search would cut for the smallest L2
        # (a table searched on a CPU with a larger L2 than this one's cuts wider slabs).
        n_pad = _round_up(problem.n, self.nr)
        narrowest = _slab_columns(problem, self.nr, MIN_L2_BYTES // 2)
        return whole and registers_ok and (self.nc == n_pad or self.nc >= narrowest)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _slab_columns(problem: MatmulProblem, nr: int, budget_bytes: int | None = None) -> int:
    """The widest slab of whole panels that divides the padded N and fits the L2 budget
    (``problem``'s, unless ``budget_bytes`` says)."""
    budget = problem.l2_budget_bytes if budget_bytes is None else budget_bytes
    panels = _round_up(problem.n, nr) // nr
    itemsize = np.dtype(problem.dtype).itemsize
    best = 1
    for count in range(1, panels + 1):
        if panels % count == 0 and problem.k * nr * count * itemsize <= budget:
            best = count
    return best * nr


def _packs_a(problem: MatmulProblem, mr: int, nr: int) -> bool:
    """Whether A is packed by default: when each panel is reused across column tiles, and
    always when its rows need padding. A single use does not repay the copy, even for a
    transposed A (measured: 100x10x1000 runs 1.4x faster unpacked)."""
    n_pad = _round_up(problem.n, nr)
    return n_pad // nr > 1 or problem.m % mr != 0


def _register_tiles(problem: MatmulProblem) -> list[tuple[int, int]]:
    """(mr, nr) pairs, best first by estimated cost in multiply-add time."""
    lanes = problem.lanes
    scored: dict[tuple[int, int], float] = {}
    for rows, vectors, preference in problem.cpu.tile_shapes:
        mr = min(rows, problem.m)
        nr = vectors * lanes
        if problem.n < nr:
            # A narrow output gets fewer (or partial) vectors per row rather than padding.
            nr = problem.n if problem.n < lanes else _round_up(problem.n, lanes)
        weight = preference * mr / rows * min(1.0, nr / (vectors * lanes))
        m_pad = _round_up(problem.m, mr)
        cost = m_pad * _round_up(problem.n, nr) * problem.k / weight
        if _packs_a(problem, mr, nr):
            cost += m_pad * problem.k * PACK_COST_MACS
        scored[(mr, nr)] = min(scored.get((mr, nr), float("inf")), cost)
    return sorted(scored, key=scored.__getitem__)


def candidate_configs(problem: MatmulProblem, limit: int = SEARCH_CANDIDATES) -> list[MatmulConfig]:
    """Up to ``limit`` configs worth timing, the heuristic's favourite first.

    Variations, in order: the best register tile with B unsplit, then with B read in place;
    rows vectorised instead of columns where N is narrow; the second-best tile; the
    favourite with B cut into L2-sized slabs, then with A's packing flipped; then the
    remaining tiles, each followed by its B-in-place variant.
    """
    def make(mr: int, nr: int, nc: int | None = None, pack_a: bool | None = None):
        if pack_a is None:
            pack_a = _packs_a(problem, mr, nr)
        return MatmulConfig(mr, nr, nc or _round_up(problem.n, nr), pack_a)

    tiles = _register_tiles(problem)
    best = make(*tiles[0])
    configs = [best, *_b_in_place(problem, best)[:1], *_row_vector_configs(problem)[:1],
               *(make(*tile) for tile in tiles[1:2])]
    slab = _slab_columns(problem, best.nr)
    if slab != best.nc:
        configs.append(make(best.mr, best.nr, slab))
    if problem.m % best.mr == 0:
        # Padded rows force packing, so only whole row tiles leave a choice.
        configs.append(make(best.mr, best.nr, best.nc, not best.pack_a))
    configs += _row_vector_configs(problem)[1:]
    configs += [variant for tile in tiles[1:] for config in [make(*tile)]
                for variant in [config, *_b_in_place(problem, config)]]
    if problem.b_prepacked:
        # With B packed ahead, packing A is the only copy left in a call: each tile whose
        # rows divide M is offered without it, first (the winner for every dense layer of
        # the ONNX benchmark's MLP and LeNet at batch 256 on znver4; 256x100x256: 69 us
        # with A read in place, 80 us packed).
        configs = [variant for config in configs for variant in
                   ([dataclasses.replace(config, pack_a=False), config]
                    if config.pack_a and not config.vec_m and problem.m % config.mr == 0
                    else [config])]
    unique = list(dict.fromkeys(configs))
    return unique[:max(1, limit)]


def _b_in_place(problem: MatmulProblem, config: MatmulConfig) -> list[MatmulConfig]:
    """``config`` reading B where it is stored instead of packing it, where that can work: B
    stored along j (not transposed), in whole column tiles. The packing copy costs as much
    as the product when B is large and each panel meets few row tiles (the MLP's weight
    gradient 256x784x1000 reading its input in place on znver4: 184 -> 200 GFLOPS; its
    100x256x1000 173 -> 212)."""
    variant = dataclasses.replace(config, pack_b=False)
    return [variant] if variant.fits(problem) else []


def _row_vector_configs(problem: MatmulProblem) -> list[MatmulConfig]:
    """``vec_m`` tiles, offered only where column vectors would waste a third of the work."""
    lanes = problem.lanes
    if problem.n >= 2 * lanes or _round_up(problem.n, lanes) * 2 < problem.n * 3 \
            or problem.m < lanes:
        return []
    # Up to six broadcast columns times two row vectors keeps 12 accumulators, as (6, 2) does.
    nr = max((d for d in range(1, 7) if problem.n % d == 0), default=1)
    if nr < 3 and problem.n > 6:
        nr = 6
    n_pad = _round_up(problem.n, nr)
    return [MatmulConfig(mr, nr, n_pad, True, True)
            for mr in (2 * lanes, lanes) if mr <= problem.m]


def heuristic_config(problem: MatmulProblem) -> MatmulConfig:
    """The untimed choice: the best-ranked candidate."""
    return candidate_configs(problem, 1)[0]


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
    b_prepacked = problem.b_prepacked
    if not config.fits(problem):
        raise ValueError(f"config {config} does not fit {problem}")
    mr, nr = config.mr, config.nr
    block = sch.get_sblock(BLOCK)
    m_pad, n_pad = _round_up(problem.m, mr), _round_up(problem.n, nr)
    padded = (m_pad, n_pad) != (problem.m, problem.n)
    root = sch.get_sblock("root")
    before = {sch.get(b).name_hint for b in sch.get_child_blocks(root)}
    if b_prepacked:
        new_blocks = before & PREPACKED_PAD_BLOCKS
    else:
        if padded:
            sch.pad_einsum(block, [mr if m_pad != problem.m else 1,
                                   nr if n_pad != problem.n else 1, 1])
        new_blocks = {sch.get(b).name_hint for b in sch.get_child_blocks(root)} - before

    packed_b = None
    if not b_prepacked and config.pack_b:
        packed_b = _pack(sch, block, _operand_index(sch, block, 1), problem.trans_b, nr,
                         new_blocks)
    packed_a = None
    if config.pack_a or config.vec_m or m_pad != problem.m:
        packed_a = _pack(sch, block, _operand_index(sch, block, 0), not problem.trans_a, mr,
                         new_blocks)

    if padded:
        # The padded product is followed by a block copying it out (pad_einsum's, or
        # matmul_prepacked's crop); making the product local turns that copy into the
        # register tile's write-back.
        write_back = next(c for c in sch.get_consumers(block)
                          if sch.get(c).name_hint in new_blocks)
        sch.set_scope(block, 0, "local")
    else:
        write_back = sch.cache_write(block, 0, "local")
    leftovers = _fuse_epilogues(sch, write_back)
    if config.vec_m:
        # Accumulator rows adjacent, so each row vector is one register, not a gather.
        sch.transform_layout(block, ("write", 0), lambda ri, cj: (cj, ri))

    i, j, k = sch.get_loops(block)
    io, ii = sch.split(i, factors=[None, mr])
    jc, jo, ji = sch.split(j, factors=[None, config.nc // nr, nr])
    if config.vec_m:
        sch.reorder(jc, io, jo, k, ji, ii)
        ii, ji = ji, ii  # from here on: ji is the vectorised loop, ii the unrolled one
    else:
        sch.reorder(jc, io, jo, k, ii, ji)
    # Unit loops are kept so that a block's last two loops are always its own.
    sch.reverse_compute_at(write_back, jo, preserve_unit_loops=True)
    for leftover in leftovers:
        try:
            sch.reverse_compute_at(leftover, jo, preserve_unit_loops=True)
        except s_tir.ScheduleError:
            pass  # left at the root: correct, only not fused into the tile
    if packed_a is not None and config.nc < n_pad:
        # B comes in several slabs, each of which meets every row panel of A: pack A once,
        # whole, rather than once per slab (a K x mr panel per row tile streams by).
        _schedule_pack_root(sch, packed_a, not problem.trans_a, mr, problem)
    elif packed_a is not None:
        sch.compute_at(packed_a, io, preserve_unit_loops=True)
        first, last = sch.get_loops(packed_a)[-2:]
        if problem.trans_a:
            _vectorize(sch, last)  # (k, rows): a panel row is one vector copy
        else:
            # (rows, k) would store with stride mr, which LLVM vectorises into scatters;
            # walking k outside the rows stores each panel row contiguously.
            sch.reorder(last, first)
            sch.unroll(first)
    _vectorize(sch, ji)
    sch.unroll(ii)
    outer = sch.fuse(jc, io)
    if problem.macs >= PARALLEL_MIN_MACS:
        sch.parallel(outer)
    sch.decompose_reduction(block, k)
    if not config.vec_m:
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
    if packed_b is not None:
        _schedule_pack_root(sch, packed_b, problem.trans_b, nr, problem)


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


def _problem_prim_func(problem: MatmulProblem, config: MatmulConfig) -> tvm.IRModule:
    shape_a, shape_b = problem.shapes()
    if problem.b_prepacked:
        inputs, outputs = compute.matmul_prepacked(shape_a, problem.trans_a, shape_b,
                                                   problem.trans_b, config.tiles(), (),
                                                   problem.dtype)
    else:
        inputs, outputs = compute.matmul(shape_a, problem.trans_a, shape_b, problem.trans_b,
                                         problem.dtype)
    return tvm.IRModule({"main": compute.prim_func(inputs, outputs, inputs_aligned=False)})


def _cpu_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": tuning.system_cpu()})


def _runner(problem: MatmulProblem, config: MatmulConfig) -> Callable[[], None]:
    """Build the plain matmul with ``config``; returns a call on fixed random operands."""
    sch = s_tir.Schedule(_problem_prim_func(problem, config))
    sch.work_on("main")
    if problem.b_prepacked:
        schedule_matmul_prepacked(sch)
    else:
        apply_config(sch, problem, config)
    func = tvm.tirx.build(sch.mod, target=_cpu_target())["main"]
    device = tvm.cpu(0)
    rng = np.random.default_rng(0)
    shape_a, shape_b = problem.shapes()
    if problem.b_prepacked:
        shape_b = (-(-problem.n // config.nr), problem.k, config.nr)
    args = [tvm.runtime.tensor(rng.standard_normal(shape).astype(problem.dtype), device)
            for shape in (shape_a, shape_b)]
    args.append(tvm.runtime.empty((problem.m, problem.n), problem.dtype, device))
    func(*args)  # warm-up: first touch of the buffers and of the thread pool
    return lambda: func(*args)


def _sample(run: Callable[[], None], min_seconds: float = 2e-3) -> float:
    """Mean seconds per call over at least ``min_seconds``, so timer jitter does not decide."""
    start, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - start < min_seconds:
        run()
        calls += 1
    return (time.perf_counter() - start) / calls


def measure_config(problem: MatmulProblem, config: MatmulConfig, repeat: int = 5) -> float:
    """Build the plain matmul with ``config`` and return its best time in seconds."""
    run = _runner(problem, config)
    return min(_sample(run) for _ in range(repeat))


def tune_matmul(problem: MatmulProblem, limit: int | None = None, rounds: int = 5,
                log: bool = True) -> tuple[MatmulConfig, float]:
    """Time the top ``limit`` candidates; log and return the fastest with its GFLOPS.

    Candidates are timed in alternating rounds, best round kept, so that a burst of load
    from another process on this shared machine hits them all rather than one.
    """
    runners = {}
    for config in candidate_configs(problem, limit or SEARCH_CANDIDATES):
        try:
            runners[config] = _runner(problem, config)
        except (RuntimeError, ValueError):  # ScheduleError and TVM's errors are RuntimeErrors
            continue  # a candidate the schedule cannot realise is simply not a winner
    if not runners:
        return heuristic_config(problem), 0.0
    best_time = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for config, run in runners.items():
            best_time[config] = min(best_time[config], _sample(run))
    best = min(best_time, key=best_time.__getitem__)
    gflops = 2.0 * problem.macs / best_time[best] / 1e9
    if log:
        tuning.record(LOG_KIND, problem.key(),
                      {**asdict(best), "gflops": round(gflops, 2), "tried": len(runners)})
    return best, gflops


def choose_config(problem: MatmulProblem) -> MatmulConfig:
    """Logged tiles if any, else a search (unless ``DLSYS_TUNE=0``, the process has spent
    its search budget, ``tuning.search_budget_s``, or the problem is too small to gain)."""
    record = tuning.lookup(LOG_KIND, problem.key())
    config = MatmulConfig.from_json(record, problem) if record is not None else None
    if config is not None:
        return config
    if problem.macs < SEARCH_MIN_MACS or not tuning.search_allowed():
        return heuristic_config(problem)
    start = time.perf_counter()
    try:
        # A packed B comes with inference sessions, whose search runs once per model and
        # shape: twice the candidates, as the pack_a variants double them.
        return tune_matmul(problem, 2 * SEARCH_CANDIDATES if problem.b_prepacked else None)[0]
    finally:
        tuning.spend_search_time(time.perf_counter() - start)


def _all_blocks(sch: s_tir.Schedule) -> list:
    return sch.get_child_blocks(sch.get_sblock("root"))


def inline_epilogue(sch: s_tir.Schedule):
    """Inline every elementwise block after "matmul" into the last one; return that block.

    Fused kernels (``compute.matmul_epilogue``) chain elementwise blocks after the product;
    folding the chain into one block leaves the matmul schedule a single consumer to place.
    """
    blocks = _all_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if names[-1] == "matmul":
        return None
    for block in blocks[names.index("matmul") + 1:-1]:
        sch.compute_inline(block)
    return _all_blocks(sch)[-1]


# Output columns per step of the matrix-vector product: two rows of B share each load of A.
GEMV_ROWS = 2
# A matrix-vector product reads all of B once: split between cores, each half stays in a
# core's L2 from call to call (1x784 by 784x256: 17 us on one core, 5 us on two, znver4).
GEMV_PARALLEL_MIN_MACS = 1 << 14


def gemv_lanes(problem: MatmulProblem) -> int | None:
    """Vector lanes along k for a matrix-vector product, or None where the tiled schedule
    applies: one output row with B stored along k (PyTorch's weight layout, a batch of one),
    and a whole number of vectors of at least 4 lanes in k."""
    if problem.m != 1 or not problem.trans_b:
        return None
    return next((w for w in range(problem.lanes, 3, -1) if problem.k % w == 0), None)


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


def schedule_matmul_tuned(sch: s_tir.Schedule,
                          fallback: Callable[[s_tir.Schedule], None] | None = None) -> None:
    """The tuned schedule for a PrimFunc holding a ``matmul`` block and optional epilogues.

    A function the tuned schedule cannot handle (not a plain matmul, or a primitive that
    refuses) gets ``fallback`` instead, which is tried on a copy first so a refusal midway
    never leaves ``sch`` half-transformed.
    """
    try:
        problem = matmul_problem(sch)
        lanes = gemv_lanes(problem)
        if lanes is not None:
            try:
                schedule_gemv(sch.copy(), problem, lanes)
            except (RuntimeError, ValueError):
                lanes = None  # the tiled schedule below still applies
        if lanes is not None:
            schedule_gemv(sch, problem, lanes)
            return
        config = choose_config(problem)
        apply_config(sch.copy(), problem, config)
    except (RuntimeError, ValueError):  # ScheduleError and TVM's errors are RuntimeErrors
        if fallback is not None:
            fallback(sch)
        return
    apply_config(sch, problem, config)


# The blocks compute.matmul_prepacked brings where pad_einsum would make them.
PREPACKED_PAD_BLOCKS = frozenset({"A_pad", "matmul_crop"})


def prepacked_tiles(shape_a: tuple, trans_a: bool, shape_b: tuple, trans_b: bool,
                    dtype: str) -> tuple | None:
    """The tiles ``(mr, nr, nc, pack_a, vec_m)`` of ``compute.matmul_prepacked`` for a
    product whose B is constant, so that B can be packed in panels of ``nr`` once, ahead of
    every call; None where B is better read as stored (the matrix-vector product reads each
    row of B once, so panels would gain nothing)."""
    m, n, k = compute.matmul_sizes(shape_a, trans_a, shape_b, trans_b)
    problem = MatmulProblem(m, n, k, trans_a, trans_b, dtype, b_prepacked=True)
    if gemv_lanes(problem) is not None:
        return None
    return choose_config(problem).tiles()


def schedule_matmul_prepacked(sch: s_tir.Schedule) -> None:
    """``compute.matmul_prepacked`` with the tiles its B was packed for: the tuned schedule
    without B's padding and packing (``apply_config`` of a ``b_prepacked`` problem)."""
    block = sch.get_sblock(BLOCK)
    stmt = sch.get(block)
    m, n, k, trans_a, trans_b, mr, nr, nc, pack_a, vec_m = (
        int(v) for v in stmt.annotations[compute.MATMUL_TILES_ATTR])
    sch.unannotate(block, compute.MATMUL_TILES_ATTR)
    problem = MatmulProblem(m, n, k, bool(trans_a), bool(trans_b),
                            str(stmt.writes[0].source.dtype), b_prepacked=True)
    apply_config(sch, problem, MatmulConfig(mr, nr, nc, bool(pack_a), bool(vec_m)))
