"""The compile pipeline: from the nodes asked for and the feeds' shapes to a ``Program``.

``PASSES`` below is the whole compiler, in the order it runs, one line per pass: each pass is
a plain function over a ``Compilation`` (the values computed so far) and says which of them
it reads (``requires``) and which it sets (``provides``), as NNVM's passes declare their graph
attributes. ``compile`` runs them top to bottom and freezes the result into a ``Program``,
which the executor allocates and runs; ``describe`` prints it as a table of steps and the
memory plan, for people reading what the compiler made of their graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlsys.checks import format_bytes
from dlsys.errors import ArgumentError, MemoryBudgetError
from dlsys.graph import IndexBounds, Node, Shape, find_topo_sort, short_name
from dlsys.kernels.build import Kernel
from dlsys.passes.batch_split import split_batch
from dlsys.passes.dtypes import index_checks, index_placeholders, infer_dtypes
from dlsys.passes.fusion import eliminate_dead_steps, fuse_epilogues
from dlsys.passes.lower import Step, build_steps
from dlsys.passes.memory_plan import MemoryPlan, order_problems, plan_memory, verify_plan
from dlsys.passes.prepack import constant_values, pack_constant_operands
from dlsys.passes.recompute import RecomputePlan, fit_memory_budget, total_flops
from dlsys.passes.shape_inference import infer_shapes


@dataclass(frozen=True)
class CompileOptions:
    """How to compile: the element type and target, and the switches the tests compare.

    ``fuse=False`` runs one kernel per node (fusion's reference); ``share_memory=False``
    gives every value its own buffer (the planner's reference). ``contiguous``: values asked
    for to place side by side in one buffer (every gradient, for one allreduce).
    ``constants``: parameters whose values may be treated as fixed (folded and prepacked).
    ``memory_budget``: the bytes a run may hold, counting the plan's working memory, every
    placeholder's value (parameters and feeds), the constants computed ahead and
    ``reserved_bytes`` (an optimiser's state, held beside the program); values are
    recomputed to fit it (``passes.recompute``), else compiling fails with a
    ``MemoryBudgetError`` naming the smallest budget reachable. None: today's plan.
    ``split_batch``: on the CPU, a graph holding constants computes its first large layers
    slice of the batch by slice where that keeps them in the caches (``passes.batch_split``).
    """

    dtype: str = "float32"
    target: str = "llvm"  # "llvm" (the CPU) or "cuda"
    fuse: bool = True
    share_memory: bool = True
    contiguous: tuple[Node, ...] = ()
    constants: frozenset[Node] = frozenset()
    memory_budget: int | None = None
    reserved_bytes: int = 0
    split_batch: bool = True


@dataclass
class Compilation:
    """What the passes have computed so far; each pass reads and sets some of these fields
    (``Pass.requires`` and ``Pass.provides`` name them)."""

    outputs: list[Node]
    feed_shapes: dict[Node, Shape]
    options: CompileOptions
    order: list[Node]                      # every node, inputs first
    keep: set[Node]                        # the values asked for: never overwritten in a run
    feed_dtypes: dict[Node, str] = field(default_factory=dict)  # the integer feeds' types
    shapes: dict[Node, Shape] = field(default_factory=dict)
    dtypes: dict[Node, str] = field(default_factory=dict)
    index_checks: dict[Node, list[tuple[IndexBounds, Node]]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    constant_params: tuple[Node, ...] = ()
    constant: set[Node] = field(default_factory=set)
    first_per_run_step: int = 0
    plan: MemoryPlan | None = None
    kernels: list[Kernel | None] = field(default_factory=list)
    fixed_bytes: int = 0                   # placeholders, constants and reserved bytes
    recompute: RecomputePlan | None = None


@dataclass(frozen=True)
class Pass:
    """One pass: ``run`` reads the ``requires`` fields of a ``Compilation`` and sets its
    ``provides`` fields."""

    name: str
    run: Callable[[Compilation], None]
    requires: tuple[str, ...]
    provides: tuple[str, ...]


# ------------------------------------------------------------------------------ the passes
def _infer_shapes(c: Compilation) -> None:
    c.shapes = infer_shapes(c.order, c.feed_shapes)


def _infer_dtypes(c: Compilation) -> None:
    c.dtypes = infer_dtypes(c.order, c.feed_dtypes, c.options.dtype)
    c.index_checks = index_checks(c.order, c.shapes)


def _split_batch(c: Compilation) -> None:
    o = c.options
    if not (o.split_batch and o.constants and o.target == "llvm" and o.memory_budget is None):
        return
    itemsize = np.dtype(o.dtype).itemsize
    outputs = split_batch(c.order, c.outputs, c.shapes, itemsize, set(o.constants))
    if outputs is not None:
        c.outputs, c.keep = outputs, set(outputs)
        c.order = find_topo_sort(outputs)
        _infer_shapes(c)
        _infer_dtypes(c)


def _lower(c: Compilation) -> None:
    c.steps = build_steps(c.order, c.shapes, c.dtypes)


def _fuse(c: Compilation) -> None:
    # Without fusion the dead steps still go (a value nobody reads), so both runs compare
    # the same values.
    c.steps = (fuse_epilogues(c.steps, c.shapes, c.keep) if c.options.fuse
               else eliminate_dead_steps(c.steps, c.keep))


def _fold_constants(c: Compilation) -> None:
    if not c.options.constants:
        return
    # A parameter a kernel updates in place changes within the run: not a constant.
    updated = {s.writes_state for s in c.steps if s.writes_state is not None}
    c.constant_params = tuple(p for p in c.order if p in c.options.constants
                              and p.op.is_placeholder and p not in updated)
    c.constant = constant_values(c.steps, set(c.constant_params), c.keep)


def _prepack(c: Compilation) -> None:
    # The packed layouts are the CPU matmul's.
    if c.constant and c.options.target == "llvm":
        c.steps, c.shapes = pack_constant_operands(c.steps, c.shapes, c.constant,
                                                   c.options.dtype)
        c.constant = constant_values(c.steps, set(c.constant_params), c.keep)


def _hoist_constants(c: Compilation) -> None:
    # Constant steps read only constants, so they can all run first, once.
    hoisted = [s for s in c.steps if s.output in c.constant]
    c.steps = hoisted + [s for s in c.steps if s.output not in c.constant]
    c.first_per_run_step = len(hoisted)


def _check_order(c: Compilation) -> None:
    misordered = order_problems(c.steps)
    if misordered:  # a pass broke the schedule: never run it and return stale values
        raise RuntimeError("dlsys internal error, please report: " + "; ".join(misordered))


def _fixed_bytes(c: Compilation) -> None:
    # What a run holds besides the plan: every placeholder's value (in its own type), each
    # constant computed ahead in a buffer of its own, and what the caller reserves.
    def nbytes(node: Node) -> int:
        return int(np.prod(c.shapes[node])) * np.dtype(c.dtypes.get(node,
                                                                   c.options.dtype)).itemsize
    hoisted = c.steps[:c.first_per_run_step]
    c.fixed_bytes = (sum(nbytes(p) for p in c.feed_shapes)
                     + sum(nbytes(s.output) for s in hoisted if s.alias_of is None)
                     + c.options.reserved_bytes)


def _plan(c: Compilation, steps: list[Step], shapes: dict[Node, Shape]) -> MemoryPlan:
    itemsize = np.dtype(c.options.dtype).itemsize
    try:
        return plan_memory(steps, shapes, c.keep, itemsize, share=c.options.share_memory,
                           contiguous=c.options.contiguous)
    except ValueError as err:  # a contiguous group that cannot be placed
        # The executor's ``contiguous`` argument, so named as before the pipeline existed.
        raise ArgumentError(f"Executor: {err}") from None


def _fit_memory_budget(c: Compilation) -> None:
    budget = c.options.memory_budget
    if budget is None:
        return
    per_run = c.steps[c.first_per_run_step:]
    chosen, tried = fit_memory_budget(per_run, c.shapes, c.dtypes, c.keep,
                                      budget - c.fixed_bytes,
                                      lambda steps, shapes: _plan(c, steps, shapes).planned_bytes)
    if chosen is None:
        smallest = min(t.planned_bytes for t in tried) + c.fixed_bytes
        raise MemoryBudgetError(
            f"memory budget {format_bytes(budget)} is below what this graph can reach at "
            f"these shapes: the smallest is {format_bytes(smallest)} ({smallest} bytes: "
            f"{format_bytes(c.fixed_bytes)} of parameters, feeds, constants and reserved "
            f"state, and {format_bytes(smallest - c.fixed_bytes)} of working memory, "
            f"recomputing what can be recomputed)", smallest)
    if chosen is tried[0] and len(tried) == 1:
        return  # the plain plan fits: unchanged
    c.steps = c.steps[:c.first_per_run_step] + chosen.steps
    c.shapes, c.dtypes = chosen.shapes, chosen.dtypes
    c.recompute = RecomputePlan(chosen.kept, chosen.recomputed, chosen.extra_flops,
                                total_flops(per_run, c.shapes), chosen.reordered,
                                tried[0].planned_bytes)


def _plan_memory(c: Compilation) -> None:
    itemsize = np.dtype(c.options.dtype).itemsize
    # Constant values live across runs in buffers of their own: only per-run steps.
    c.plan = _plan(c, c.steps[c.first_per_run_step:], c.shapes)
    # The reference is one buffer per node of the graph as written, before fusion removed
    # some of them, so the figure shows what fusion and planning save together.
    c.plan.naive_bytes = itemsize * sum(int(np.prod(c.shapes[n])) for n in c.order
                                        if not n.op.is_placeholder)


def _check_budget(c: Compilation) -> None:
    # The checker proves what the budget asks: a sound plan (every value, recomputed ones
    # included, computed before it is read and never overwritten while still needed) whose
    # bytes, with what a run holds besides, are within the budget.
    if c.options.memory_budget is None:
        return
    assert c.plan is not None  # set by plan_memory
    problems = verify_plan(c.steps[c.first_per_run_step:], c.shapes, c.keep, c.plan,
                           provided=frozenset(c.constant), fixed_bytes=c.fixed_bytes,
                           budget_bytes=c.options.memory_budget)
    if problems:
        raise RuntimeError("dlsys internal error, please report: the plan under the memory "
                           "budget fails its check: " + "; ".join(problems))


def _build_kernels(c: Compilation) -> None:
    # Compiled once per kind, parameters, dtype and target, then fetched from the cache.
    c.kernels = [None if s.alias_of is not None
                 else s.kernel.build(c.options.target, c.options.dtype) for s in c.steps]


# The compiler, in order. Reorder or add a pass here; ``_check_passes`` below refuses a list
# where a pass reads a field no earlier pass (nor ``compile``'s arguments) set.
PASSES: tuple[Pass, ...] = (
    Pass("infer_shapes", _infer_shapes, ("order", "feed_shapes"), ("shapes",)),
    Pass("infer_dtypes", _infer_dtypes, ("order", "feed_dtypes", "shapes"),
         ("dtypes", "index_checks")),
    Pass("split_batch", _split_batch, ("order", "outputs", "shapes", "options"),
         ("order", "outputs", "keep", "shapes", "dtypes", "index_checks")),
    Pass("lower", _lower, ("order", "shapes", "dtypes"), ("steps",)),
    Pass("fuse", _fuse, ("steps", "shapes", "keep"), ("steps",)),
    Pass("fold_constants", _fold_constants, ("steps", "keep"), ("constant_params", "constant")),
    Pass("prepack", _prepack, ("steps", "shapes", "constant"), ("steps", "shapes", "constant")),
    Pass("hoist_constants", _hoist_constants, ("steps", "constant"),
         ("steps", "first_per_run_step")),
    Pass("count_fixed_bytes", _fixed_bytes, ("feed_shapes", "shapes", "dtypes", "steps",
                                              "first_per_run_step"), ("fixed_bytes",)),
    Pass("fit_memory_budget", _fit_memory_budget,
         ("steps", "shapes", "dtypes", "keep", "first_per_run_step", "fixed_bytes"),
         ("steps", "shapes", "dtypes", "recompute")),
    Pass("check_order", _check_order, ("steps",), ()),
    Pass("plan_memory", _plan_memory, ("steps", "shapes", "keep", "first_per_run_step"),
         ("plan",)),
    Pass("check_budget", _check_budget, ("steps", "shapes", "keep", "plan", "fixed_bytes"),
         ()),
    Pass("build_kernels", _build_kernels, ("steps",), ("kernels",)),
)

_GIVEN = ("outputs", "feed_shapes", "feed_dtypes", "options", "order", "keep")


def _check_passes(passes: Sequence[Pass]) -> None:
    """Refuse a pass list where a pass reads a field nothing set before it."""
    available = set(_GIVEN)
    for p in passes:
        missing = [name for name in p.requires if name not in available]
        if missing:
            raise RuntimeError(f"pass {p.name} requires {missing}, which no earlier pass provides")
        available.update(p.provides)


_check_passes(PASSES)


# ------------------------------------------------------------------------------ the program
@dataclass
class Program:
    """The compiled graph for one set of feed shapes: what the executor allocates and runs.

    ``steps`` run in order, one kernel call each (``kernels[i]``, None for an alias, which
    runs nothing); the first ``first_per_run_step`` compute constant values, run once ahead
    of the runs and again only when a constant changes. ``plan`` assigns the per-run values
    their storage; ``state_targets`` are the parameters kernels update in place.
    """

    outputs: list[Node]
    placeholders: list[Node]
    shapes: dict[Node, Shape]
    steps: list[Step]
    kernels: list[Kernel | None]
    plan: MemoryPlan
    first_per_run_step: int
    constant_params: tuple[Node, ...]
    constant_values: frozenset[Node]
    state_targets: frozenset[Node]
    options: CompileOptions
    # Every node's element type (integer ids and their reshapes; the rest options.dtype),
    # and the bounds each index placeholder's values must keep, with the node asking.
    dtypes: dict[Node, str] = field(default_factory=dict)
    index_checks: dict[Node, list[tuple[IndexBounds, Node]]] = field(default_factory=dict)
    # What a run holds besides the plan (placeholders, constants, reserved bytes), and what
    # recomputation did to fit ``options.memory_budget`` (None: nothing).
    fixed_bytes: int = 0
    recompute: RecomputePlan | None = None

    def rows(self) -> list[StepRow]:
        """One row per step, in run order (see ``StepRow``)."""
        return [_step_row(self, step) for step in self.steps]

    def storage_rows(self) -> list[tuple[int, int, list[str]]]:
        """``(storage id, bytes, names of the values it holds in turn)`` for every storage
        of the memory plan; their bytes add up to ``plan.planned_bytes``."""
        held: dict[int, list[str]] = {sid: [] for sid in range(len(self.plan.storage_elements))}
        for node, sid in self.plan.storage_of.items():
            held[sid].append(short_name(node))
        itemsize = self.plan.itemsize
        return [(sid, elements * itemsize, held[sid])
                for sid, elements in enumerate(self.plan.storage_elements)]

    def table(self) -> str:
        """The steps and the memory plan as plain-text tables (what ``describe`` prints)."""
        return describe(self)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class StepRow:
    """One step as ``describe`` shows it.

    ``operators``: the operators the kernel computes (a fused step lists its anchor, then
    its epilogue). ``storage``: per output, its storage id, or where its value lives instead
    (``const`` for a value computed ahead of the runs, ``state`` for a parameter updated in
    place, ``feed`` for a view of a fed value). ``bytes``: the outputs' sizes.
    """

    kernel: str
    operators: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    storage: tuple[str, ...]
    bytes: int


def _step_row(program: Program, step: Step) -> StepRow:
    """``step`` as a row of the table."""
    plan, itemsize = program.plan, program.plan.itemsize
    kernel_name = "(alias, no kernel)" if step.alias_of is not None else step.kernel.kind
    if step.anchor is not None:
        operators = (step.anchor.op.name, *(label for label, *_ in step.epilogue))
    else:
        operators = tuple(out.op.name for out in (*step.extra_outputs, step.output))
    storage = []
    for out in step.outputs:
        if out in plan.storage_of:
            storage.append(str(plan.storage_of[out]))
        elif out in program.constant_values:
            storage.append("const")
        elif step.writes_state is not None:
            storage.append(f"state {short_name(step.writes_state)}")
        else:
            storage.append("feed")
    size = sum(int(np.prod(program.shapes[out])) for out in step.outputs) * itemsize
    return StepRow(kernel_name, operators, tuple(short_name(i) for i in step.inputs),
                   tuple(short_name(o) for o in step.outputs), tuple(storage), size)


def _format(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    """Rows of cells as lines of left-aligned columns under ``header``."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip()
            for r in [header, *rows]]


def describe(program: Program) -> str:
    """The program as text: one row per step (kernel, fused operators, inputs, outputs,
    storage ids, bytes), then one row per storage of the memory plan, then the plan's
    totals. What ``dlsys inspect`` prints."""
    step_rows = [(str(i), r.kernel, "+".join(r.operators), ", ".join(r.inputs),
                  ", ".join(r.outputs), ", ".join(r.storage), str(r.bytes))
                 for i, r in enumerate(program.rows())]
    lines = [f"program: {len(program.steps)} steps, "
             f"{sum(k is not None for k in program.kernels)} kernel calls "
             f"({program.first_per_run_step} ahead of the runs), "
             f"{program.options.dtype} on {program.options.target}", ""]
    lines += _format(("#", "kernel", "operators", "inputs", "outputs", "storage", "bytes"),
                     step_rows)
    storage = [(str(sid), str(size), ", ".join(names))
               for sid, size, names in program.storage_rows()]
    lines += ["", *_format(("storage", "bytes", "holds in turn"), storage)]
    stats = program.plan.stats()
    lines += ["", f"planned {stats['planned_bytes']} bytes in {stats['buffers']} buffers; "
                  f"one buffer per node {stats['naive_bytes']}, live peak "
                  f"{stats['peak_live_bytes']}, {stats['inplace_steps']} steps in place"]
    return "\n".join(lines)


def compile(outputs: Sequence[Node], feed_shapes: dict[Node, Shape],
            options: CompileOptions | None = None,
            feed_dtypes: dict[Node, str] | None = None, build: bool = True) -> Program:
    """Run ``PASSES`` over the graph computing ``outputs``, for placeholders of
    ``feed_shapes`` (every placeholder the outputs read, parameters included) and the
    integer types of the placeholders fed indices (``feed_dtypes``; the others are of
    ``options.dtype``), and return the ``Program`` an executor allocates and runs.
    ``build=False`` stops before the kernels are built: a program to read (its steps, its
    memory plan, whether a budget is met), not to run."""
    outputs = list(outputs)
    options = options if options is not None else CompileOptions()
    order = find_topo_sort(outputs)
    # Placeholders read as indices and not given a type are int64, numpy's default integer.
    index_feeds = {p: "int64" for p in index_placeholders(order)} | dict(feed_dtypes or {})
    c = Compilation(outputs, dict(feed_shapes), options, order, set(outputs),
                    feed_dtypes=index_feeds)
    for p in PASSES:
        if build or p.name != "build_kernels":
            p.run(c)
    assert c.plan is not None  # set by plan_memory
    return Program(c.outputs, [n for n in c.order if n.op.is_placeholder], c.shapes, c.steps,
                   c.kernels, c.plan, c.first_per_run_step, c.constant_params,
                   frozenset(c.constant),
                   frozenset(s.writes_state for s in c.steps if s.writes_state is not None),
                   options, c.dtypes, c.index_checks, c.fixed_bytes, c.recompute)
