"""Operator fusion: fold the elementwise neighbourhood of each matmul into its kernel, and
compute the loss in its gradient's kernel.

The pass rewrites the executor's step list (see ``memory_plan.Step``). Starting from each
fusion anchor (a matmul), it follows the chain of single consumers whose operators can act
as an epilogue (bias add, relu, relu-gradient mask, by-constant ops) and replaces the chain
with one step that computes ``epilogue(A @ B)`` in a single kernel, so the intermediate
matrices are never written to memory. A node joins only when the running result has no
other reader and was not asked for, so every value anyone reads still exists.

One rewrite makes the forward pass fusable: ``ReluGradient(a, g)`` reads the pre-activation
``a`` only through ``a > 0``, which equals ``relu(a) > 0``; reading the relu's output instead
lets ``a`` live and die inside the forward kernel.
"""

from __future__ import annotations

from dataclasses import replace

from dlsys.graph import Node, Shape
from dlsys.passes.memory_plan import Step


def _readers(steps: list[Step]) -> dict[Node, list[Step]]:
    readers: dict[Node, list[Step]] = {}
    for step in steps:
        for node in set(step.inputs):
            readers.setdefault(node, []).append(step)
    return readers


def read_relu_output_in_relu_gradient(steps: list[Step]) -> list[Step]:
    """Point each ReluGradient at the relu's output instead of its pre-activation input.

    Only a relu computed by an *earlier* step qualifies: a relu of the same input scheduled
    later would be read before it is written (its buffer still holds the previous run's value).
    """
    relu_of: dict[Node, Node] = {}
    rewritten = []
    for step in steps:
        mask = step.inputs[0] if step.inputs else None
        if step.output.op.name == "ReluGradient" and mask in relu_of and step.alias_of is None:
            inputs = (relu_of[mask],) + step.inputs[1:]
            inplace = step.inplace_input if step.inplace_input is not mask else None
            step = replace(step, inputs=inputs, inplace_input=inplace)
        if step.output.op.name == "Relu" and step.alias_of is None:
            relu_of.setdefault(step.inputs[0], step.output)
        rewritten.append(step)
    return rewritten


def fuse_epilogues(steps: list[Step], shapes: dict[Node, Shape], keep: set[Node]) -> list[Step]:
    """Merge each matmul with its chain of elementwise consumers (see the module docstring)."""
    steps = read_relu_output_in_relu_gradient(steps)
    readers = _readers(steps)
    absorbed: set[Node] = set()
    merged: dict[Node, Step] = {}
    for step in steps:
        if not step.output.op.fusion_anchor or step.alias_of is not None:
            continue
        chain: list[tuple] = []
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
            merged[result] = Step(result, step.inputs + tuple(operands), anchor=step.output,
                                  epilogue=tuple(chain))
            absorbed.add(step.output)
    fused = []
    for step in steps:
        if step.output in merged:
            fused.append(merged[step.output])
        elif step.output not in absorbed:
            fused.append(step)
    return eliminate_dead_steps(fuse_loss_with_gradient(fused), keep)


def fuse_loss_with_gradient(steps: list[Step]) -> list[Step]:
    """Compute ``SoftmaxXEntropy(y, t)`` in the kernel of ``SoftmaxXEntropyGrad(y, t, g)``.

    Both need each row's max and sum of exponentials; one kernel computes them once and
    writes both outputs. The loss moves to the gradient's step, so no step in between may
    read it (in a training graph only ``OnesLike(loss)`` sits there, which reads no value).
    """
    losses = {step.inputs[:2]: index for index, step in enumerate(steps)
              if step.output.op.name == "SoftmaxXEntropy" and step.alias_of is None}
    fused = list(steps)
    moved: set[int] = set()
    for index, step in enumerate(steps):
        loss_index = losses.get(step.inputs[:2])
        if (step.output.op.name != "SoftmaxXEntropyGrad" or loss_index is None
                or loss_index in moved or loss_index > index):
            continue
        loss = steps[loss_index].output
        if any(loss in between.inputs for between in steps[loss_index + 1:index]):
            continue
        fused[index] = replace(step, extra_outputs=(loss,))
        moved.add(loss_index)
    return [step for index, step in enumerate(fused) if index not in moved]


def eliminate_dead_steps(steps: list[Step], keep: set[Node]) -> list[Step]:
    """Drop steps whose value nobody reads and nobody asked for (e.g. a bias broadcast that
    fusion replaced by reading the vector)."""
    while True:
        read = {node for step in steps for node in step.inputs}
        live = [s for s in steps if any(out in read or out in keep for out in s.outputs)]
        if len(live) == len(steps):
            return live
        steps = live
