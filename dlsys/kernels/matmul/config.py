"""The matmul's tile sizes: the problem a product poses (``MatmulProblem``), a choice of
tiles (``MatmulConfig``), the candidates worth timing and the untimed heuristic choice.

Nothing here builds or times a kernel: ``dlsys.kernels.matmul.schedule`` applies a config,
``dlsys.kernels.matmul.search`` times candidates and picks one per shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.cpu import CpuFacts

# Configs a first-use search times per shape (twice as many for a packed B).
SEARCH_CANDIDATES = 4
# A packed element (a scalar load and store) costs about as long as this many multiply-adds
# inside the vectorised FMA loop; used to rank tiles that pad A against those that do not.
PACK_COST_MACS = 8
# An operand copied into panels across its stored rows (a transposed B, or an untransposed A
# turned into row vectors) gathers one element per load from rows far apart: measured at
# about this many multiply-adds per element (B of 256 x 784, transposed, packed in ~90 us
# on one znver4 core, where the product runs at ~50 G multiply-adds per second).
GATHER_COST_MACS = 24
# A ``vec_m`` tile stores its output one element at a time, at about this many
# multiply-adds' time each: what decides a short reduction (1000 x 100 x 10 with B
# transposed, znver4: 53 us reading B in place, 47 copying it).
SCALAR_STORE_MACS = 12
# Row-vector tiles reading B in place are preferred to copying B only where they are
# estimated to save this much: at 1000 x 256 x 784 they ran 8 % slower than estimated (89
# GFLOPS on one znver4 core, against 103 for every M from 16 to 256).
IN_PLACE_MARGIN = 0.9
# A tile that can read B in place (untransposed, whole column tiles) is preferred to the
# same tile copying B where the copy would cost this share of the product or more: few row
# tiles then meet each panel, and the copy is one more parallel loop to start (16 x 256 x
# 100 on two znver4 cores: 14.6 us copying B, 6.4 us reading it in place; 64 x: 26.8 ->
# 18.4; 4 x: 9.1 -> 2.3).
COPY_SHARE_AVOIDED = 0.05
# A reduction this short or shorter gets a small tile reading both operands in place
# (``_short_reduction_tiles``), of this many rows.
SHORT_K = 64
SHORT_K_ROWS = 4
# Independent pieces of work (column slabs times row tiles) that a product reading B in
# place is cut into, so that both cores of a small-batch product get some.
MIN_PARALLEL_JOBS = 4
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
    whole column tiles, streamed with stride N instead of copied; or, with ``vec_m``, a
    transposed B whose rows supply the broadcast values, each streamed along k).

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
        # B read in place, unpadded: column vectors need its rows along j (untransposed);
        # broadcasts (vec_m) are taken one by one, from rows along k (transposed).
        b_in_place = self.pack_b or (not problem.b_prepacked and self.nr > 0
                                     and problem.n % self.nr == 0
                                     and self.vec_m == problem.trans_b)
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
    return max(_slab_panel_counts(problem, nr, budget_bytes), default=1) * nr


def _slab_panel_counts(problem: MatmulProblem, nr: int, budget_bytes: int | None = None
                       ) -> list[int]:
    """The numbers of ``nr``-column panels a slab may hold: dividing the padded N, fitting the
    L2 budget (``problem``'s, unless ``budget_bytes`` says); ascending."""
    budget = problem.l2_budget_bytes if budget_bytes is None else budget_bytes
    panels = _round_up(problem.n, nr) // nr
    itemsize = np.dtype(problem.dtype).itemsize
    return [count for count in range(1, panels + 1)
            if panels % count == 0 and problem.k * nr * count * itemsize <= budget]


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

    Variations, in order: for a short reduction, a small tile copying nothing; the best
    register tile with B unsplit, then with B read in place
    (the other way round where copying B would cost a noticeable share of the product);
    rows vectorised instead of columns where N is narrow; the second-best tile; the
    favourite with B cut into L2-sized slabs, then with A's packing flipped; then the
    remaining tiles, each followed by its B-in-place variant. A transposed B read in place
    by row vectors is offered first where copying B would cost more than copying A (a
    small batch), else second.
    """
    def make(mr: int, nr: int, nc: int | None = None, pack_a: bool | None = None):
        if pack_a is None:
            pack_a = _packs_a(problem, mr, nr)
        return MatmulConfig(mr, nr, nc or _round_up(problem.n, nr), pack_a)

    tiles = _register_tiles(problem)
    best = make(*tiles[0])
    favourites = [best, *_b_in_place(problem, best)[:1]]
    if _copy_cost(problem.n * problem.k, problem.trans_b) >= COPY_SHARE_AVOIDED * problem.macs:
        favourites.reverse()  # B read in place first, where there is a variant that does
    configs = [*_short_reduction_tiles(problem), *favourites,
               *_row_vector_configs(problem)[:1], *(make(*tile) for tile in tiles[1:2])]
    for unpacked in _row_vectors_b_in_place(problem)[:1]:
        # Second where not first, so that a search still times it.
        packed = [best] + ([dataclasses.replace(best, pack_a=False)]
                           if problem.m % best.mr == 0 else [])
        cheaper = (_cost_b_in_place(problem, unpacked) < IN_PLACE_MARGIN
                   * min(_cost_b_packed(problem, config) for config in packed))
        configs.insert(0 if cheaper else 1, unpacked)
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
    if not variant.fits(problem) and not config.vec_m and problem.n % config.nr:
        # N not a whole number of the tile's columns (LeNet's 400, a tile of 64): the widest
        # narrower tile of whole vectors that divides N, in the widest slab fitting L2
        # (LeNet-5's input gradient 1 x 400 x 120 spent 20 us packing B for 48k
        # multiply-adds).
        lanes = problem.lanes
        widths = [nr for nr in range(config.nr - lanes, 0, -lanes) if problem.n % nr == 0]
        if widths:
            variant = dataclasses.replace(variant, nr=widths[0],
                                          nc=_slab_columns(problem, widths[0]))
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


def _short_reduction_tiles(problem: MatmulProblem) -> list[MatmulConfig]:
    """A tile of 4 rows by one vector reading both operands where they lie, for a reduction
    of at most ``SHORT_K``: a weight's gradient at a small batch (K = batch), whose work is
    mostly writing its output. Measured on znver4 against the ranked tiles (6 x 4 vectors,
    operands copied): 256 x 784 x 16 90 -> 66 us on one core, 51 -> 34 on two; 120 x 400 x 16
    23 -> 16; 64 x 784 x 64 81 -> 66 (A untransposed); at K = 128 and beyond it loses."""
    lanes = problem.lanes
    if (problem.k > SHORT_K or problem.trans_b or problem.b_prepacked
            or problem.n % lanes or problem.m % SHORT_K_ROWS):
        return []
    nc = _parallel_slab(problem, lanes, problem.m // SHORT_K_ROWS)
    return [MatmulConfig(SHORT_K_ROWS, lanes, nc, pack_a=False, pack_b=False)]


def _row_vectors_b_in_place(problem: MatmulProblem) -> list[MatmulConfig]:
    """``vec_m`` tiles that read a transposed B where it is stored, for a product whose B
    would otherwise be copied at every call (not packed ahead).

    B's rows are contiguous along k, so each of the ``nr`` rows of a tile streams its
    broadcast values in order and B is never copied; A is copied instead, into panels of
    row vectors, which costs less where M < N: a dense layer's forward at a small batch,
    whose weight changes at every training step (16 x 256 x 784 on znver4, one core: 158 us
    copying B, 62 us reading it in place). The tile has one vector of rows (all of M where
    M is narrower) and the widest column count dividing N that the registers hold.
    """
    if not problem.trans_b or problem.b_prepacked:
        return []
    lanes = problem.lanes
    mr = min(problem.m, lanes)
    # Four accumulators at least, to cover the FMA's latency; one register for A's vector.
    most = min(16, problem.cpu.vector_registers - 2)
    columns = [d for d in range(4, most + 1) if problem.n % d == 0]
    if not columns:
        return []
    nr = columns[-1]
    nc = _parallel_slab(problem, nr, -(-problem.m // mr))
    return [MatmulConfig(mr, nr, nc, True, True, False)]


def _parallel_slab(problem: MatmulProblem, nr: int, row_tiles: int) -> int:
    """The widest slab of ``nr``-column panels that divides N, fits the L2 budget and cuts
    the product into at least ``MIN_PARALLEL_JOBS`` pieces with ``row_tiles``."""
    panels = problem.n // nr
    fitting = _slab_panel_counts(problem, nr)
    enough = [count for count in fitting if panels // count * row_tiles >= MIN_PARALLEL_JOBS]
    return max(enough or fitting[:1] or [1]) * nr


def _cost_b_packed(problem: MatmulProblem, config: MatmulConfig) -> float:
    """Estimated multiply-add time of a column-vector tile that copies B at every call: the
    product at the fill of its vectors, and the copies of B and (if packed) A."""
    lanes_used = _round_up(problem.n, config.nr) // config.nr * _round_up(config.nr, problem.lanes)
    fill = problem.n / lanes_used * problem.m / _round_up(problem.m, config.mr)
    copies = _copy_cost(problem.n * problem.k, problem.trans_b)
    if config.pack_a:
        copies += _copy_cost(_round_up(problem.m, config.mr) * problem.k, not problem.trans_a)
    return problem.macs / fill + copies


def _cost_b_in_place(problem: MatmulProblem, config: MatmulConfig) -> float:
    """Estimated multiply-add time of a ``vec_m`` tile reading B in place: the product at
    the fill of its row vectors, A's copy into them, and its output stored element by
    element (its accumulators hold columns of C)."""
    m_pad = _round_up(problem.m, config.mr)
    fill = problem.m / (m_pad // config.mr * _round_up(config.mr, problem.lanes))
    return (problem.macs / fill + _copy_cost(m_pad * problem.k, not problem.trans_a)
            + problem.m * problem.n * SCALAR_STORE_MACS)


def _copy_cost(elements: int, gathered: bool) -> float:
    """Multiply-add time of copying ``elements`` into panels, across stored rows or along."""
    return elements * (GATHER_COST_MACS if gathered else PACK_COST_MACS)


def heuristic_config(problem: MatmulProblem) -> MatmulConfig:
    """The untimed choice: the best-ranked candidate."""
    return candidate_configs(problem, 1)[0]


def gemv_lanes(problem: MatmulProblem) -> int | None:
    """Vector lanes along k for a matrix-vector product, or None where the tiled schedule
    applies: one output row with B stored along k (PyTorch's weight layout, a batch of one),
    and a whole number of vectors of at least 4 lanes in k."""
    if problem.m != 1 or not problem.trans_b:
        return None
    return next((w for w in range(problem.lanes, 3, -1) if problem.k % w == 0), None)
