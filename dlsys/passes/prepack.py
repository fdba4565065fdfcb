"""Constant folding for inference: which values never change between runs, and the operand
layouts that can therefore be made once instead of at every call.

An executor told that some parameters are constant (an ``InferenceSession``'s weights) asks
two things of its lowered steps (``passes.lower.Step``):

- ``constant_values``: every value computed from constants alone. The executor runs the
  steps computing them once, ahead of the runs, and again only when a constant changes.
- ``pack_constant_operands``: a step whose operator declares a ``packable_input`` re-lays
  that input out at every call (the matmul copies B into panels). Where the input is
  constant, the step reads it through a new step computing the packed layout, which is
  itself constant and so runs once (onnxruntime packs its weights at load likewise).
"""

from __future__ import annotations

from dataclasses import replace

from dlsys.graph import Node, Shape
from dlsys.passes.lower import Step


def constant_values(steps: list[Step], constants: set[Node], keep: set[Node]) -> set[Node]:
    """``constants`` and every value the steps compute from them alone, except values asked
    for (``keep``: returned to the caller, so computed at every run) and state updates."""
    constant = set(constants)
    for step in steps:
        if (step.writes_state is None and step.inputs
                and all(i in constant for i in step.inputs)
                and not any(out in keep for out in step.outputs)):
            constant.update(step.outputs)
    return constant


def pack_constant_operands(steps: list[Step], shapes: dict[Node, Shape], constant: set[Node],
                           dtype: str) -> tuple[list[Step], dict[Node, Shape]]:
    """The steps with every constant ``packable_input`` read through a packing step, and the
    shapes with the packed values added. One packed value serves every step asking for the
    same layout of the same input."""
    shapes = dict(shapes)
    packed_by_layout: dict[tuple, Node] = {}
    rewritten: list[Step] = []
    for step in steps:
        node = step.anchor if step.anchor is not None else step.output
        index = node.op.packable_input
        if (index is None or step.alias_of is not None or step.writes_state is not None
                or node.inputs[index] not in constant
                or step.inputs[index] is not node.inputs[index]):
            rewritten.append(step)
            continue
        packed = node.op.packed_kernel_spec(node, shapes, step.kernel, dtype)
        if packed is None:
            rewritten.append(step)
            continue
        pack_node, spec = packed
        layout = (node.inputs[index], pack_node.op,
                  tuple(sorted(pack_node.attrs.items())))
        if layout not in packed_by_layout:
            packed_by_layout[layout] = pack_node
            shapes[pack_node] = pack_node.op.infer_shape(
                pack_node, [shapes[i] for i in pack_node.inputs])
            rewritten.append(Step(pack_node, tuple(pack_node.inputs),
                                  kernel=pack_node.op.kernel_spec(
                                      pack_node, [shapes[i] for i in pack_node.inputs],
                                      shapes[pack_node])))
        # A fused step reads the anchor's inputs first, so ``index`` is its position too.
        inputs = step.inputs[:index] + (packed_by_layout[layout],) + step.inputs[index + 1:]
        rewritten.append(replace(step, inputs=inputs, kernel=spec))
    return rewritten, shapes
