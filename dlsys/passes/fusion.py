"""Operator fusion, driven by the traits operators declare (``dlsys.graph.Op``).

Three rewrites of the lowered steps (``passes.lower.Step``):

- *epilogues*: starting from each fusion anchor (a matmul), follow the chain of single
  consumers whose operators can act as an epilogue (bias add, relu, relu-gradient mask,
  by-constant ops, any unary elementwise op) and replace the chain with one step that
  computes ``epilogue(anchor)`` in the anchor's kernel, so the intermediate tensors are
  never written to memory. A node joins only when the running result has no other reader
  and was not asked for, so every value anyone reads still exists.
- *sign sources*: an input read only through ``x > 0`` (``sign_only_input``, the relu
  gradient's mask) may be read from an earlier step's output that is positive exactly where
  ``x`` is (``keeps_positive_sign``, the relu); then ``x`` can live and die inside the
  forward kernel.
- *absorbed siblings*: an operator that ``absorbs`` another computes that node's value in
  its own kernel as a second output (the loss inside its gradient's kernel, which needs the
  same row max and row sum).

Each rewrite keeps the schedule's order sound: a step never reads a value computed later
(``memory_plan.order_problems`` checks it).
"""

from __future__ import annotations

from dataclasses import replace

from dlsys.graph import Node, Shape
from dlsys.passes.lower import Step


def _readers(steps: list[Step]) -> dict[Node, list[Step]]:
    readers: dict[Node, list[Step]] = {}
    for step in steps:
        for node in set(step.inputs):
            readers.setdefault(node, []).append(step)
    return readers


def read_sign_from_earlier_outputs(steps: list[Step]) -> list[Step]:
    """Point each sign-only input at an earlier output with the same positive set."""
    same_sign: dict[Node, Node] = {}   # value -> an earlier output positive where it is
    rewritten = []
    for step in steps:
        index = step.output.op.sign_only_input
        if index is not None and step.alias_of is None and step.inputs[index] in same_sign:
            source = step.inputs[index]
            inputs = step.inputs[:index] + (same_sign[source],) + step.inputs[index + 1:]
            inplace = step.inplace_input if step.inplace_input is not source else None
            step = replace(step, inputs=inputs, inplace_input=inplace)
        # Registered after the step is rewritten: only steps *after* it may read its output.
        if step.output.op.keeps_positive_sign and step.alias_of is None:
            same_sign.setdefault(step.inputs[0], step.output)
        rewritten.append(step)
    return rewritten


def fuse_epilogues(steps: list[Step], shapes: dict[Node, Shape], keep: set[Node]) -> list[Step]:
    """Apply the three rewrites of the module docstring, then drop the steps nobody reads."""
    steps = read_sign_from_earlier_outputs(steps)
    readers = _readers(steps)
    absorbed: set[Node] = set()
    merged: dict[Node, Step] = {}
    for step in steps:
        if not step.output.op.fusion_anchor or step.alias_of is not None:
            continue
        chain: list = []
        operands: list[Node] = []
        result = step.output
        while result not in keep and len(readers.get(result, [])) == 1:
            consumer = readers[result][0]
            # A consumer another chain already took stays there: its kernel materialises
            # this chain's result as an operand.
            if consumer.alias_of is not None or consumer.output in absorbed:
                break
            joined = consumer.output.op.epilogue(consumer.output, consumer.inputs, result,
                                                 shapes)
            if joined is None:
                break
            epilogue_step, extra = joined
            chain.append(epilogue_step)
            operands.extend(extra)
            absorbed.add(consumer.output)
            result = consumer.output
        if chain:
            anchor = step.output
            merged[result] = Step(result, step.inputs + tuple(operands), anchor=anchor,
                                  epilogue=tuple(e.label_tuple for e in chain),
                                  kernel=anchor.op.fused_kernel_spec(anchor, shapes, chain))
            absorbed.add(anchor)
    fused = []
    for step in steps:
        if step.output in merged:
            fused.append(merged[step.output])
        elif step.output not in absorbed:
            fused.append(step)
    return eliminate_dead_steps(fuse_absorbed_siblings(fused, shapes), keep)


def fuse_absorbed_siblings(steps: list[Step], shapes: dict[Node, Shape]) -> list[Step]:
    """Compute a node of operator ``op.absorbs`` in the kernel of a later step of ``op``.

    The absorbed value moves to the later step, so no step in between may read it (in a
    training graph only ``OnesLike(loss)`` sits between the loss and its gradient, and it
    reads no value).
    """
    by_op: dict[object, list[int]] = {}
    for index, step in enumerate(steps):
        if step.alias_of is None and not step.extra_outputs:
            by_op.setdefault(step.output.op, []).append(index)
    fused = list(steps)
    moved: set[int] = set()
    for index, step in enumerate(steps):
        target_op = step.output.op.absorbs
        if target_op is None or step.alias_of is not None or step.anchor is not None:
            continue
        for other_index in by_op.get(target_op, []):
            if other_index > index or other_index in moved:
                continue
            other = steps[other_index]
            spec = step.output.op.absorb_kernel_spec(step.output, other.output, shapes,
                                                     step.kernel)
            if spec is None or any(out in between.inputs for between in steps[other_index + 1:index]
                                   for out in other.outputs):
                continue
            fused[index] = replace(step, extra_outputs=other.outputs, kernel=spec)
            moved.add(other_index)
            break
    return [step for index, step in enumerate(fused) if index not in moved]


def eliminate_dead_steps(steps: list[Step], keep: set[Node]) -> list[Step]:
    """Drop steps whose value nobody reads and nobody asked for (e.g. a bias broadcast that
    fusion replaced by reading the vector), except state updates."""
    while True:
        read = {node for step in steps for node in step.inputs}
        # A state update is a side effect: it runs whether or not its value is read.
        live = [s for s in steps if s.writes_state is not None
                or any(out in read or out in keep for out in s.outputs)]
        if len(live) == len(steps):
            return live
        steps = live
