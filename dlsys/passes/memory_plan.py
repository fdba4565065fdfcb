"""Static memory planning: a storage id for every value the executor computes.

Given the executor's steps (one kernel call each, in run order), the pass computes each
value's live range (the step that defines it to the last step that reads it) and assigns
storage so that values whose live ranges never overlap share a buffer. Three kinds of reuse:

- *sharing*: a value takes a free buffer left by values that died at earlier steps;
- *in place*: an elementwise step writes into the buffer of an input that dies at that
  step (the kernel reads each element before writing it, so nothing is clobbered);
- *aliases*: a step that is the identity at these shapes (summing a tensor to its own
  shape) runs no kernel; its value is its input's storage.

Feeds are never planned (the user owns them) and the values asked for (``keep``) are never
overwritten within a run, so they stay readable after ``run`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dlsys.graph import Node, Shape
from dlsys.passes.lower import Step


@dataclass
class MemoryPlan:
    """The pass's answer: which storage holds each value, and how large each storage is."""

    storage_of: dict[Node, int]          # every computed value, aliases included
    storage_elements: list[int]          # size of each storage, in elements
    itemsize: int
    naive_bytes: int                     # one buffer per node output
    peak_live_bytes: int                 # largest total of values alive at one step
    inplace_steps: set[Node] = field(default_factory=set)
    # Values placed side by side in one storage (``contiguous``): their offsets in elements,
    # and that storage's id (None when no group was asked for).
    offset_of: dict[Node, int] = field(default_factory=dict)
    contiguous_storage: int | None = None

    @property
    def planned_bytes(self) -> int:
        return sum(self.storage_elements) * self.itemsize

    def stats(self) -> dict[str, int]:
        return {"naive_bytes": self.naive_bytes, "planned_bytes": self.planned_bytes,
                "buffers": len(self.storage_elements), "peak_live_bytes": self.peak_live_bytes,
                "inplace_steps": len(self.inplace_steps)}


def _elements(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def resolve_aliases(steps: list[Step]) -> dict[Node, Node]:
    """Each step's output mapped to the value that owns its storage (itself unless an alias)."""
    root: dict[Node, Node] = {}
    for step in steps:
        # A state update's output lives in the state's own tensor, like an alias of it.
        source = step.alias_of if step.alias_of is not None else step.writes_state
        root[step.output] = root.get(source, source) if source is not None else step.output
        for extra in step.extra_outputs:
            root[extra] = extra
    return root


def live_ranges(steps: list[Step], keep: set[Node]) -> tuple[dict[Node, int], dict[Node, int]]:
    """First definition and last use (a step index) of every storage-owning value.

    Values in ``keep`` live to the end; a value nobody reads dies at its own step.
    """
    root = resolve_aliases(steps)
    # An alias of a feed is rooted at the feed, which the user owns: it gets no range, so no
    # step can take its buffer over (in place) and the plan gives it no storage.
    computed = {out for step in steps if step.alias_of is None and step.writes_state is None
                for out in step.outputs}
    end = len(steps)
    first: dict[Node, int] = {}
    last: dict[Node, int] = {}
    for t, step in enumerate(steps):
        for owner in {root[out] for out in step.outputs}:
            if owner in computed:
                first.setdefault(owner, t)
                last[owner] = max(last.get(owner, t), t)
        for node in step.inputs:
            if root.get(node) in computed:
                last[root[node]] = max(last.get(root[node], t), t)
    for node in keep:
        if root.get(node) in computed:
            last[root[node]] = end
    return first, last


def plan_memory(steps: list[Step], shapes: dict[Node, Shape], keep: set[Node], itemsize: int,
                share: bool = True, contiguous: Sequence[Node] = ()) -> MemoryPlan:
    """Assign storage ids; ``share=False`` gives every value its own buffer (the reference).

    ``contiguous``: kept values to place side by side, in this order, in one storage of their
    own (e.g. every gradient, so that one collective call reduces them all without packing).

    Reuse policy: best fit. A new value takes the smallest free buffer that holds it, so
    large buffers stay free for large values; when none is large enough it grows the largest
    free one, which costs only the difference instead of a whole new buffer. Activations and
    their gradients come in a few sizes (batch x width), so this finds near-peak plans. Where
    it does not (a transformer's many sizes: 1.11x its peak), values placed largest first
    (``_assign_by_size``) may do better (1.04x): the smaller plan of the two is kept.
    """
    root = resolve_aliases(steps)
    first, last = live_ranges(steps, keep)
    sizes = {owner: _elements(shapes[owner]) for owner in first}
    storage_elements: list[int] = []
    offset_of_owner, group_sid = _contiguous_group(contiguous, root, sizes, keep,
                                                   storage_elements, itemsize)
    placed = list(storage_elements)  # the contiguous group's storage, if any
    storage_of_owner, inplace_steps = _assign_storage(steps, root, last, sizes, share,
                                                      offset_of_owner, group_sid,
                                                      storage_elements)
    if share and len(first) <= BY_SIZE_MAX_VALUES:
        by_size = _assign_by_size(steps, root, first, last, sizes, inplace_steps,
                                  offset_of_owner, placed)
        if sum(by_size[1]) < sum(storage_elements):
            by_size[0].update(dict.fromkeys(offset_of_owner, group_sid))
            storage_of_owner, storage_elements = by_size
    storage_of = {node: storage_of_owner[owner] for node, owner in root.items()
                  if owner in storage_of_owner}
    offset_of = {node: offset_of_owner[owner] for node, owner in root.items()
                 if owner in offset_of_owner}
    naive = sum(_elements(shapes[out]) for step in steps for out in step.outputs) * itemsize
    return MemoryPlan(storage_of, storage_elements, itemsize, naive,
                      _peak_live(steps, root, first, last, sizes, inplace_steps) * itemsize,
                      inplace_steps, offset_of, group_sid)


def _assign_storage(steps: list[Step], root: dict[Node, Node], last: dict[Node, int],
                    sizes: dict[Node, int], share: bool, offset_of_owner: dict[Node, int],
                    group_sid: int | None, storage_elements: list[int],
                    ) -> tuple[dict[Node, int], set[Node]]:
    """Each storage-owning value's storage id, decided in run order: the contiguous group's,
    an input's taken over in place, or a buffer by best fit (new ones are appended to
    ``storage_elements``); a buffer is free again after its values' last use.

    Returns the storage id of every owner and the steps that write in place.
    """
    storage_of_owner: dict[Node, int] = dict.fromkeys(offset_of_owner, group_sid)
    free: list[int] = []
    inplace_steps: set[Node] = set()
    dying: dict[int, list[Node]] = {}
    for owner, t in last.items():
        dying.setdefault(t, []).append(owner)
    for t, step in enumerate(steps):
        owner = step.output
        candidate = None
        if owner in offset_of_owner:
            pass  # placed in the group's storage up front; it is kept, so never freed
        elif step.alias_of is None and step.writes_state is None:
            candidate, in_place = _inplace_candidate(step, t, root, last, sizes, share)
            if in_place:
                storage_of_owner[owner] = storage_of_owner[candidate]
                inplace_steps.add(owner)
            else:
                storage_of_owner[owner] = _allocate(sizes[owner], free, storage_elements, share)
            for extra in step.extra_outputs:
                if extra not in offset_of_owner:
                    storage_of_owner[extra] = _allocate(sizes[extra], free, storage_elements,
                                                        share)
        # Values can also die at an alias step (the last reader), and their buffers must be
        # freed there too, or they leak for the rest of the plan.
        if share:
            for dead in dying.get(t, []):
                sid = storage_of_owner.get(dead)
                # A buffer taken over in place stays with its new owner.
                if sid is not None and not (dead is candidate and owner in inplace_steps):
                    free.append(sid)
    return storage_of_owner, inplace_steps


# Placing values largest first compares each with the values already in a buffer: quadratic,
# so graphs beyond this many values keep the run-order plan alone.
BY_SIZE_MAX_VALUES = 4000


def _assign_by_size(steps: list[Step], root: dict[Node, Node], first: dict[Node, int],
                    last: dict[Node, int], sizes: dict[Node, int], inplace_steps: set[Node],
                    offset_of_owner: dict[Node, int], placed: list[int],
                    ) -> tuple[dict[Node, int], list[int]]:
    """The same values (and the same in-place steps) placed largest first: each value, with
    the values written in place over it, takes the smallest buffer whose values' live ranges
    do not meet its own, else a new buffer of its size. ``placed``: buffers made before
    (the contiguous group's), left as they are. Returns storage ids and buffer sizes."""
    chain: dict[Node, Node] = {}  # each value -> the value whose buffer it lives in
    for step in steps:
        for out in step.outputs:
            owner = root[out]
            if owner not in first or owner in offset_of_owner or owner in chain:
                continue
            written_over = out in inplace_steps and step.inplace_input is not None
            chain[owner] = chain[root[step.inplace_input]] if written_over else owner
    spans: dict[Node, list[int]] = {}
    for owner, head in chain.items():
        span = spans.setdefault(head, [first[owner], last[owner], sizes[owner]])
        span[0], span[1] = min(span[0], first[owner]), max(span[1], last[owner])
        span[2] = max(span[2], sizes[owner])
    elements = list(placed)
    ranges: list[list[tuple[int, int]]] = [[] for _ in elements]
    storage_of_head: dict[Node, int] = {}
    for head in sorted(spans, key=lambda h: (-spans[h][2], spans[h][0])):
        start, end, need = spans[head]
        # A value dying at step t and one born there overlap: the step reads one, writes
        # the other.
        free = [sid for sid in range(len(placed), len(elements)) if elements[sid] >= need
                and all(end < a or b < start for a, b in ranges[sid])]
        if free:
            sid = min(free, key=lambda s: elements[s])
        else:
            elements.append(need)
            ranges.append([])
            sid = len(elements) - 1
        ranges[sid].append((start, end))
        storage_of_head[head] = sid
    return {owner: storage_of_head[head] for owner, head in chain.items()}, elements


def _inplace_candidate(step: Step, t: int, root: dict[Node, Node], last: dict[Node, int],
                       sizes: dict[Node, int], share: bool) -> tuple[Node | None, bool]:
    """The value whose buffer step ``t``'s output may write in place (None when the step
    allows none), and whether it does: only when that value dies at this step and is the
    output's size."""
    candidate = None
    if step.inplace_input is not None:
        candidate = root.get(step.inplace_input, step.inplace_input)
    # Kept values live to len(steps) and feeds have no range, so neither passes.
    in_place = (share and candidate is not None and last.get(candidate) == t
                and sizes[candidate] == sizes[step.output])
    return candidate, in_place


# Kernels assume 64-byte aligned arguments (one AVX-512 vector, TVM's default alignment), so
# each value of a contiguous group starts on such a boundary; the gaps are a few elements.
GROUP_ALIGN_BYTES = 64


def _contiguous_group(contiguous: Sequence[Node], root: dict[Node, Node],
                      sizes: dict[Node, int], keep: set[Node], storage_elements: list[int],
                      itemsize: int) -> tuple[dict[Node, int], int | None]:
    """Offsets (in elements) of the values to place side by side, and their storage id."""
    align = max(1, GROUP_ALIGN_BYTES // itemsize)
    if not contiguous:
        return {}, None
    offsets: dict[Node, int] = {}
    total = 0
    for node in contiguous:
        owner = root.get(node)
        if node not in keep or owner not in sizes or owner in offsets:
            # A feed (or a view of one), a value not kept to the end, or one listed twice
            # cannot have a place of its own in the group.
            raise ValueError(f"{node.name} cannot be placed in a contiguous group: it must be "
                             f"a computed value asked for, listed once")
        offsets[owner] = total
        total += -(-sizes[owner] // align) * align
    storage_elements.append(total)
    return offsets, len(storage_elements) - 1


def _allocate(need: int, free: list[int], storage_elements: list[int], share: bool) -> int:
    """A storage id for a value of ``need`` elements, by best fit among the free buffers."""
    if share and free:
        fitting = [s for s in free if storage_elements[s] >= need]
        sid = (min(fitting, key=lambda s: storage_elements[s]) if fitting
               else max(free, key=lambda s: storage_elements[s]))
        free.remove(sid)
        storage_elements[sid] = max(storage_elements[sid], need)
        return sid
    storage_elements.append(need)
    return len(storage_elements) - 1


def _peak_live(steps, root, first, last, sizes, inplace_steps) -> int:
    """Largest total size of values alive at one step; an in-place pair counts once.

    A sweep over birth and death events, linear in the steps: rescanning every value at
    every step made planning quadratic, seconds for a few thousand nodes.
    """
    change = [0] * (len(steps) + 2)
    for owner, t in first.items():
        change[t] += sizes[owner]
        change[last[owner] + 1] -= sizes[owner]
    peak = live = 0
    for t, step in enumerate(steps):
        live += change[t]
        shared = sizes[root[step.inplace_input]] if step.output in inplace_steps else 0
        peak = max(peak, live - shared)
    return peak


def order_problems(steps: list[Step], provided: frozenset = frozenset()) -> list[str]:
    """Every step that reads a value no earlier step computed (and no feed or ``provided``
    value computed ahead of the run, such as a constant), or a state that a state update has
    already overwritten in this run.

    A pass that rewrites what a step reads (fusion does) must keep this list empty: such a
    read would see whatever the buffer held before, typically the previous run's value.
    """
    problems: list[str] = []
    defined: set[Node] = set(provided)
    overwritten: dict[Node, Step] = {}  # state placeholder -> the step that updated it
    for t, step in enumerate(steps):
        for node in step.inputs:
            if node not in defined and not node.op.is_placeholder:
                problems.append(f"step {t} ({step.output.name}) reads {node.name} before any "
                                f"step computes it")
            if node in overwritten:
                problems.append(f"step {t} ({step.output.name}) reads {node.name} after "
                                f"{overwritten[node].output.name} overwrote it")
        if step.writes_state is not None:
            if step.writes_state in overwritten:
                problems.append(f"{step.writes_state.name} is updated twice in one run")
            overwritten[step.writes_state] = step
        defined.update(step.outputs)
    return problems


def verify_plan(steps: list[Step], shapes: dict[Node, Shape], keep: set[Node],
                plan: MemoryPlan, provided: frozenset = frozenset(), fixed_bytes: int = 0,
                budget_bytes: int | None = None) -> list[str]:
    """Every way ``plan`` is wrong, as messages (empty when it is sound).

    Checks that every step reads only values computed before it, that each buffer holds its
    values, that no two values alive at the same step share a buffer (except an output
    written in place over an input that dies at that step, where the step allows it), and
    that kept values are never shared with anything later. ``provided``: values that exist
    before the steps run (constants computed ahead), which the plan does not hold. With a
    ``budget_bytes``, also that the plan's bytes and ``fixed_bytes`` (what a run holds
    besides: parameters, feeds, constants) stay within it.

    Recomputed values (``passes.recompute``) are values like any other: the first check
    proves each is computed before it is read, the sharing check that none, nor any input of
    a later recomputation, is overwritten while still needed.
    """
    problems: list[str] = order_problems(steps, provided)
    if budget_bytes is not None and plan.planned_bytes + fixed_bytes > budget_bytes:
        problems.append(f"the plan's {plan.planned_bytes} bytes and {fixed_bytes} bytes held "
                        f"besides exceed the memory budget of {budget_bytes} bytes")
    root = resolve_aliases(steps)
    first, last = live_ranges(steps, keep)
    for owner in first:
        sid = plan.storage_of.get(owner)
        if sid is None or not 0 <= sid < len(plan.storage_elements):
            problems.append(f"{owner.name}: no valid storage (got {sid!r})")
        elif plan.storage_elements[sid] < plan.offset_of.get(owner, 0) + _elements(shapes[owner]):
            problems.append(f"{owner.name}: storage {sid} is smaller than its value")
    for node, owner in root.items():
        if owner in first and plan.storage_of.get(node) != plan.storage_of.get(owner):
            problems.append(f"{node.name}: an alias of {owner.name} but not in its storage")
    if problems:
        return problems  # the sharing check below needs every value to have a storage
    return _sharing_problems(steps, shapes, plan, root, first, last)


def _sharing_problems(steps: list[Step], shapes: dict[Node, Shape], plan: MemoryPlan,
                      root: dict[Node, Node], first: dict[Node, int], last: dict[Node, int]
                      ) -> list[str]:
    """Pairs of values of one storage alive at the same step with overlapping elements,
    except an output written in place over an input dying there. Each storage's values are
    swept in order of birth against those still alive: linear in the values but for the
    overlaps themselves, so the check stays cheap for programs of thousands of steps."""
    by_storage: dict[int, list[Node]] = {}
    for owner in first:
        by_storage.setdefault(plan.storage_of[owner], []).append(owner)
    reported: set[tuple[int, int]] = set()
    problems: list[str] = []
    for sid, owners in by_storage.items():
        alive: list[Node] = []
        for value in sorted(owners, key=lambda o: (first[o], o.id)):
            t = first[value]
            alive = [o for o in alive if last[o] >= t]
            clashing = _overlapping([value, *alive], shapes, plan.offset_of)
            others = [o for o in clashing if o is not value]
            if value in clashing and others:
                step = steps[t]
                taken = root.get(step.inplace_input)
                legal_inplace = (len(others) == 1 and others[0] is taken and last[taken] == t
                                 and value is step.output)
                if not legal_inplace and (sid, t) not in reported:
                    reported.add((sid, t))
                    names = ", ".join(o.name for o in [*others, value])
                    problems.append(f"step {t} ({step.output.name}): storage {sid} holds live "
                                    f"values {names}")
            alive.append(value)
    return problems


def _overlapping(values: list[Node], shapes: dict[Node, Shape],
                 offset_of: dict[Node, int]) -> list[Node]:
    """The values of one storage whose element ranges overlap another's (values placed side
    by side in a contiguous group share a storage without overlapping)."""
    spans = [(offset_of.get(v, 0), offset_of.get(v, 0) + _elements(shapes[v]), v) for v in values]
    return [v for start, end, v in spans
            if any(s < end and start < e for s, e, w in spans if w is not v)]
