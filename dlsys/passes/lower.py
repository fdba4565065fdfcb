"""Lowering: the graph as a list of steps, one kernel call each, in run order.

``Step`` is the lowered program's unit, the IR that fusion rewrites, the memory plan
assigns storage to and the executor runs. Each step carries the ``KernelSpec`` that
computes it, so the executor builds kernels without knowing any operator.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlsys.errors import ArgumentTypeError
from dlsys.graph import Node, Shape
from dlsys.kernels.registry import KernelSpec


@dataclass(frozen=True)
class Step:
    """One kernel call: ``output`` computed from ``inputs`` by ``kernel``.

    ``inplace_input`` is the input the kernel may overwrite (elementwise kernels);
    ``alias_of`` marks a step whose output *is* that input, so it runs no kernel. A fused
    step (see ``passes.fusion``) computes ``epilogue(anchor)``: its inputs are the anchor's
    operands, then the epilogue's operands, and ``epilogue`` shows the steps joined (as
    label tuples). A kernel with several outputs lists the others in ``extra_outputs``,
    written after ``output``. ``writes_state`` is the placeholder (a parameter or buffer)
    whose own tensor the kernel writes the output into: the output gets no planned storage.
    """

    output: Node
    inputs: tuple[Node, ...]
    inplace_input: Node | None = None
    alias_of: Node | None = None
    anchor: Node | None = None
    epilogue: tuple = ()
    extra_outputs: tuple[Node, ...] = ()
    kernel: KernelSpec | None = None
    writes_state: Node | None = None

    @property
    def outputs(self) -> tuple[Node, ...]:
        return (self.output, *self.extra_outputs)


def _kernel_spec(node: Node, in_shapes: list[Shape], shapes: dict[Node, Shape],
                 dtypes: dict[Node, str] | None) -> KernelSpec:
    """The node's kernel; an operator reading integer indices gets their fed types."""
    indices = node.op.index_inputs + node.op.optional_index_inputs
    if not indices:
        return node.op.kernel_spec(node, in_shapes, shapes[node])
    index_dtypes = tuple((dtypes or {}).get(node.inputs[i], "int64") for i in indices)
    return node.op.index_kernel_spec(node, in_shapes, shapes[node], index_dtypes)


def build_steps(order: list[Node], shapes: dict[Node, Shape],
                dtypes: dict[Node, str] | None = None) -> list[Step]:
    """One step per computed node, marking aliases and legal in-place candidates.
    ``dtypes`` gives the integer types of index inputs (default int64)."""
    steps = []
    for node in order:
        if node.op.is_placeholder:
            continue
        in_shapes = [shapes[i] for i in node.inputs]
        reads = tuple(node.op.kernel_inputs(node))
        if node.op.is_alias(node, in_shapes):
            steps.append(Step(node, reads, alias_of=node.inputs[0]))
            continue
        if node.op.updates_state is not None:
            state = node.inputs[node.op.updates_state]
            if not state.op.holds_value:
                raise ArgumentTypeError(f"{node.name}: input {state.name} must be a parameter "
                                        f"or buffer (it is updated in place)")
            steps.append(Step(node, reads, writes_state=state,
                              kernel=_kernel_spec(node, in_shapes, shapes, dtypes)))
            continue
        inplace = None
        index = node.op.inplace_input
        # An input of another shape (a broadcast operand) cannot hold the output.
        if index is not None and shapes[node.inputs[index]] == shapes[node]:
            inplace = node.inputs[index]
        steps.append(Step(node, reads, inplace_input=inplace,
                          kernel=_kernel_spec(node, in_shapes, shapes, dtypes)))
    return steps
