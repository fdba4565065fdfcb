"""Training under a memory budget: values dropped after the forward pass and computed again
in the backward pass (Chen, Xu, Zhang and Guestrin, "Training Deep Nets with Sublinear
Memory Cost", 2016).

The memory plan cannot go below the values alive at once. In a training step most of them
are the forward pass's activations, kept for the backward pass (the *stash*). This pass
trades work for memory over the lowered steps (``passes.lower.Step``), in three moves tried
in turn until the plan fits the budget:

1. the plain program, unchanged;
2. the same steps in another order (``order_for_memory``): each next step is the ready one
   that frees the most memory, so a weight gradient runs as soon as its inputs exist and
   lets them go, instead of where the graph's depth-first order put it;
3. recomputation: the stash values are walked in forward order and every few of them kept
   (the *checkpoints*, a segment of about ``b`` bytes between two); the others die after
   their forward readers and are computed again, by the very step that made them, just
   before the first backward step that reads them, from the nearest checkpoints. The
   segment sizes ``b`` tried run from "keep everything" to "keep almost nothing", and the
   plan with the least recomputed work that fits is kept.

A recomputed value is a new node running the same kernel on the same inputs (or on their
own recomputed copies), so the results are bit-identical to the plain program's. Steps that
update a state in place (running statistics, a dropout seed), that write several outputs,
that read a state some step overwrites, or whose value was asked for are never recomputed.
The memory plan then lays the rewritten steps out as any others, and its checker
(``memory_plan.verify_plan``) proves them sound: no value read before it is recomputed, and
none overwritten while a later recomputation still needs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from dlsys.graph import Node, Shape
from dlsys.passes.lower import Step
from dlsys.passes.memory_plan import live_ranges, resolve_aliases

# How many segment sizes the search tries between "keep all" and "keep none"; each costs one
# rewrite and one memory plan.
SEGMENT_SIZES_TRIED = 24


@dataclass(frozen=True)
class RecomputePlan:
    """What the pass chose for a budget.

    ``kept``: the stash values kept for the backward pass (checkpoints and values that
    cannot be recomputed); ``recomputed``: the values computed again (the originals; their
    copies are named ``<name> (recomputed)`` in the program). ``extra_flops``: the work done
    twice; ``flops``: the plain program's work per run, its reference. ``reordered``: the
    steps run in ``order_for_memory``'s order. ``plain_bytes``: the plain plan's working
    memory, the figure the budget forced down.
    """

    kept: tuple[Node, ...]
    recomputed: tuple[Node, ...]
    extra_flops: int
    flops: int
    reordered: bool
    plain_bytes: int

    def describe(self) -> str:
        """What is kept, what is recomputed and the extra work, for ``--debug-memory``."""
        names = ", ".join(n.name for n in self.recomputed) or "nothing"
        kept = ", ".join(n.name for n in self.kept) or "nothing"
        share = self.extra_flops / self.flops if self.flops else 0.0
        order = "reordered for memory" if self.reordered else "in the graph's order"
        return (f"recomputation: steps {order}; {len(self.recomputed)} values computed again "
                f"in the backward pass, {self.extra_flops / 1e9:.3f} GFLOP more per step "
                f"({share:.1%} of {self.flops / 1e9:.3f})\n"
                f"  kept for the backward pass: {kept}\n  recomputed: {names}")


def step_flops(step: Step, shapes: dict[Node, Shape]) -> int:
    """About how many arithmetic operations ``step``'s kernel does (``Op.flops`` of what it
    computes: its anchor and one per element for each fused epilogue operator)."""
    if step.alias_of is not None:
        return 0
    node = step.anchor if step.anchor is not None else step.output
    work = node.op.flops(node, [shapes[i] for i in node.inputs], shapes[node])
    return work + len(step.epilogue) * math.prod(shapes[step.output])


# ------------------------------------------------------------------------------ ordering
def order_for_memory(steps: list[Step], keep: set[Node], shapes: dict[Node, Shape]
                     ) -> list[Step]:
    """The same steps in an order that holds less memory at once: list scheduling that runs,
    among the steps whose inputs exist, the one freeing the most bytes net of what it
    allocates (values asked for count as free: they are held to the end anyway), the
    earliest in the given order on ties. A state update waits for every other reader of
    the state it overwrites, as the given order does."""
    root = resolve_aliases(steps)
    producer = {out: i for i, step in enumerate(steps) for out in step.outputs}
    waits_for: list[set[int]] = [set() for _ in steps]
    readers_of_state: dict[Node, list[int]] = {}
    remaining: dict[Node, int] = {}  # storage owner -> reads not yet scheduled
    for i, step in enumerate(steps):
        for node in step.inputs:
            if node in producer:
                waits_for[i].add(producer[node])
                remaining[root[node]] = remaining.get(root[node], 0) + 1
            elif node.op.is_placeholder:
                readers_of_state.setdefault(node, []).append(i)
    for i, step in enumerate(steps):
        if step.writes_state is not None:
            waits_for[i].update(r for r in readers_of_state.get(step.writes_state, ()) if r != i)
    held = {root[n] for n in keep if n in root}
    owns_storage = {i: step.alias_of is None and step.writes_state is None
                    for i, step in enumerate(steps)}
    unlocks: list[list[int]] = [[] for _ in steps]
    blocked = [len(w) for w in waits_for]
    for i, waits in enumerate(waits_for):
        for j in waits:
            unlocks[j].append(i)
    ready = {i for i, b in enumerate(blocked) if b == 0}
    order: list[Step] = []

    def net_bytes(i: int) -> int:
        step = steps[i]
        reads: dict[Node, int] = {}
        for node in step.inputs:
            if node in producer:
                reads[root[node]] = reads.get(root[node], 0) + 1
        freed = sum(math.prod(shapes[o]) for o, n in reads.items()
                    if remaining[o] == n and o not in held)
        made = sum(math.prod(shapes[o]) for o in step.outputs
                   if owns_storage[i] and o not in held)
        return freed - made

    while ready:
        best = max(ready, key=lambda i: (net_bytes(i), -i))
        ready.remove(best)
        order.append(steps[best])
        for node in steps[best].inputs:
            if node in producer:
                remaining[root[node]] -= 1
        for j in unlocks[best]:
            blocked[j] -= 1
            if blocked[j] == 0:
                ready.add(j)
    if len(order) != len(steps):  # a cycle: impossible for steps built from a graph
        raise RuntimeError("dlsys internal error, please report: the steps wait on each other")
    return order


# ------------------------------------------------------------------------------ rewriting
def _peak_step(steps: list[Step], keep: set[Node], shapes: dict[Node, Shape]) -> int:
    """The step at which the most bytes are alive: where the forward pass hands its stash
    to the backward pass, in a training step."""
    first, last = live_ranges(steps, keep)
    change = [0] * (len(steps) + 2)
    for owner, t in first.items():
        size = math.prod(shapes[owner])
        change[t] += size
        change[last[owner] + 1] -= size
    live, best, best_t = 0, -1, 0
    for t in range(len(steps)):
        live += change[t]
        if live > best:
            best, best_t = live, t
    return best_t


def _recomputable(steps: list[Step], keep: set[Node]) -> set[Node]:
    """The values a second run of their step recomputes exactly, without side effects."""
    overwritten = {s.writes_state for s in steps if s.writes_state is not None}
    return {s.output for s in steps
            if s.writes_state is None and not s.extra_outputs and s.output not in keep
            and (s.alias_of is not None or s.kernel is not None)
            and not any(i in overwritten for i in s.inputs)}


@dataclass
class _Split:
    """The program cut at its peak: forward steps ``[:at]``, backward steps ``[at:]``. The
    stash: values the forward steps compute and the backward steps read that can be
    recomputed, in forward order; ``recomputable``: every forward value that can be;
    ``read_early``: the values some forward step reads (the others need no first copy)."""

    at: int
    stash: list[Node]
    recomputable: set[Node]
    read_early: set[Node]


def _split(steps: list[Step], keep: set[Node], shapes: dict[Node, Shape]) -> _Split:
    at = _peak_step(steps, keep, shapes) + 1
    defined_early = {out for step in steps[:at] for out in step.outputs}
    read_early = {node for step in steps[:at] for node in step.inputs}
    read_late = {node for step in steps[at:] for node in step.inputs}
    recomputable = _recomputable(steps, keep) & defined_early
    stash = [s.output for s in steps[:at]
             if s.output in recomputable and s.output in read_late and s.alias_of is None]
    return _Split(at, stash, recomputable, read_early)


def rewrite(steps: list[Step], split: _Split, kept: set[Node], shapes: dict[Node, Shape],
            dtypes: dict[Node, str]) -> tuple[list[Step], list[Node], int]:
    """``steps`` with every recomputable forward value outside ``kept`` read by the backward
    steps from a copy computed just before its first backward reader (its inputs copied
    first where they are dropped too). A dropped value no forward step reads is not
    computed in the forward pass at all: its copy is its only computation.

    Returns the new steps, the values computed twice and the work done twice. Adds the
    copies' shapes and types to ``shapes`` and ``dtypes``."""
    dropped = split.recomputable - kept
    producer = {out: step for step in steps for out in step.outputs}
    copies: dict[Node, Node] = {}
    rewritten: list[Step] = []
    deferred: set[Node] = set()

    def ensure(node: Node) -> Node:
        """The value of ``node`` at this point of the backward pass: itself where it was
        kept, else its copy (computed now if it was not yet)."""
        if node not in dropped:
            return node
        if node in copies:
            return copies[node]
        step = producer[node]
        inputs = tuple(ensure(i) for i in step.inputs)
        copy = Node(node.op, [copies.get(i, i) for i in node.inputs], node.attrs,
                    name=f"{node.name} (recomputed)")
        shapes[copy] = shapes[node]
        if node in dtypes:
            dtypes[copy] = dtypes[node]
        rewritten.append(replace(step, output=copy, inputs=inputs,
                                 inplace_input=_mapped(step.inplace_input, copies),
                                 alias_of=_mapped(step.alias_of, copies)))
        copies[node] = copy
        return copy

    for step in steps[:split.at]:
        if step.output in dropped and step.output not in split.read_early:
            deferred.add(step.output)  # computed once, where the backward pass needs it
            continue
        rewritten.append(step)
    for step in steps[split.at:]:
        inputs = tuple(ensure(i) for i in step.inputs)
        rewritten.append(replace(step, inputs=inputs,
                                 inplace_input=_mapped(step.inplace_input, copies),
                                 alias_of=_mapped(step.alias_of, copies)))
    twice = [n for n in copies if n not in deferred]
    extra = sum(step_flops(producer[n], shapes) for n in twice)
    return rewritten, twice, extra


def _mapped(node: Node | None, copies: dict[Node, Node]) -> Node | None:
    return None if node is None else copies.get(node, node)


# A stash value is dear to recompute when its step does this many times the median work per
# byte of the stash's steps.
COSTLY_FACTOR = 4


def costly_values(steps: list[Step], stash: list[Node], shapes: dict[Node, Shape]
                  ) -> frozenset[Node]:
    """The stash values whose steps do far more work per byte kept than the stash's median
    (``COSTLY_FACTOR`` times): keeping them saves the most work for their memory."""
    producer = {step.output: step for step in steps}
    ratio = {v: step_flops(producer[v], shapes) / math.prod(shapes[v]) for v in stash}
    if not ratio:
        return frozenset()
    median = sorted(ratio.values())[len(ratio) // 2]
    return frozenset(v for v, r in ratio.items() if r > COSTLY_FACTOR * median)


def checkpoint_sets(stash: list[Node], shapes: dict[Node, Shape],
                    tries: int = SEGMENT_SIZES_TRIED) -> list[frozenset[Node]]:
    """Chen et al.'s greedy choice for segment sizes from one value to the whole stash:
    walking the stash in forward order, a value is kept when the values dropped since the
    last kept one add up to more than the segment size. Distinct sets, most kept first."""
    sizes = [math.prod(shapes[v]) for v in stash]
    if not sizes:
        return [frozenset()]
    low, high = min(sizes), sum(sizes)
    ratio = (high / low) ** (1 / max(1, tries - 1))
    thresholds = [0.0] + [low * ratio ** k for k in range(tries)] + [math.inf]
    sets: list[frozenset[Node]] = []
    for limit in thresholds:
        kept, since_kept = set(), 0
        for value, size in zip(stash, sizes):
            since_kept += size
            if since_kept > limit:
                kept.add(value)
                since_kept = 0
        if frozenset(kept) not in sets:
            sets.append(frozenset(kept))
    return sets


# ------------------------------------------------------------------------------ the search
@dataclass(frozen=True)
class Candidate:
    """One program the search tried: its steps (and the shapes and types of every value they
    compute, copies included), its planned working bytes, its extra work, and what it keeps
    and recomputes."""

    steps: list[Step]
    shapes: dict[Node, Shape]
    dtypes: dict[Node, str]
    planned_bytes: int
    extra_flops: int = 0
    kept: tuple[Node, ...] = ()
    recomputed: tuple[Node, ...] = ()
    reordered: bool = False


# Plans ``steps`` whose values have ``shapes``: their planned working bytes.
PlannedBytes = Callable[[list[Step], dict[Node, Shape]], int]


def candidates(plain: Candidate, keep: set[Node], planned_bytes: PlannedBytes
               ) -> list[Candidate]:
    """Every program the search tries, ``plain`` first: the plain steps, the steps in
    ``order_for_memory``'s order, then that order (or the plain one, whichever planned
    smaller) with each of ``checkpoint_sets``' choices recomputed."""
    ordered_steps = order_for_memory(plain.steps, keep, plain.shapes)
    ordered = Candidate(ordered_steps, plain.shapes, plain.dtypes,
                        planned_bytes(ordered_steps, plain.shapes), reordered=True)
    tried = [plain, ordered]
    base = ordered if ordered.planned_bytes < plain.planned_bytes else plain
    split = _split(base.steps, keep, base.shapes)
    costly = costly_values(base.steps, split.stash, base.shapes)
    tried_sets: list[frozenset[Node]] = []
    for chosen in checkpoint_sets(split.stash, base.shapes):
        # Each choice as Chen et al. make it, by bytes alone, and with the values dear to
        # recompute (a convolution beside the cheap normalisation and pooling after it, a
        # wide input layer beside narrow ones) kept as well.
        for kept in (chosen, chosen | costly):
            if kept not in tried_sets:
                tried_sets.append(kept)
    for kept in tried_sets:
        shapes, dtypes = dict(base.shapes), dict(base.dtypes)
        new_steps, twice, extra = rewrite(base.steps, split, set(kept), shapes, dtypes)
        if not twice and len(new_steps) == len(base.steps) and new_steps == base.steps:
            continue  # nothing dropped: the base itself
        stash_kept = tuple(v for v in split.stash if v in kept)
        tried.append(Candidate(new_steps, shapes, dtypes, planned_bytes(new_steps, shapes),
                               extra, stash_kept, tuple(twice), base.reordered))
    return tried


def fit_memory_budget(steps: list[Step], shapes: dict[Node, Shape], dtypes: dict[Node, str],
                      keep: set[Node], working_bytes: int, planned_bytes: PlannedBytes
                      ) -> tuple[Candidate | None, list[Candidate]]:
    """The program that fits ``working_bytes`` of planned memory with the least work done
    twice (the plain one when it fits, untouched), or None, with every candidate tried (the
    caller names the smallest reachable)."""
    plain = Candidate(steps, shapes, dtypes, planned_bytes(steps, shapes))
    if plain.planned_bytes <= working_bytes:
        return plain, [plain]
    tried = candidates(plain, keep, planned_bytes)
    fitting = [c for c in tried if c.planned_bytes <= working_bytes]
    if not fitting:
        return None, tried
    return min(fitting, key=lambda c: (c.extra_flops, c.planned_bytes, c.reordered)), tried


def total_flops(steps: list[Step], shapes: dict[Node, Shape]) -> int:
    return sum(step_flops(step, shapes) for step in steps)
