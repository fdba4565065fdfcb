"""Reverse-mode differentiation: gradient nodes built as graph nodes, so they are
shape-inferred, fused, planned and compiled like every other node."""

from __future__ import annotations

from collections.abc import Sequence

from dlsys.errors import ArgumentTypeError, GradientError
from dlsys.graph import Node, find_topo_sort
from dlsys.ops import add_op, oneslike_op, zeroslike_op


def gradients(output_node: Node, node_list: Sequence[Node]) -> list[Node]:
    """Gradient nodes of ``output_node`` with respect to each node of ``node_list``.

    Walks the graph in reverse topological order, summing each node's partial adjoints
    before asking its operator for the adjoints of its inputs. A node the output does not
    depend on gets a zeros gradient of its own shape.
    """
    if not isinstance(output_node, Node):
        raise ArgumentTypeError(f"gradients: output_node must be a Node, got "
                                f"{type(output_node).__name__}")
    if isinstance(node_list, Node) or not isinstance(node_list, Sequence):
        raise ArgumentTypeError(f"gradients: node_list must be a list of Nodes, got "
                                f"{type(node_list).__name__}; write [{node_list!r}] for one")
    for i, node in enumerate(node_list):
        if not isinstance(node, Node):
            raise ArgumentTypeError(f"gradients: node_list[{i}] must be a Node, got "
                                    f"{type(node).__name__}")
    partials: dict[Node, list[Node]] = {output_node: [oneslike_op(output_node)]}
    adjoint: dict[Node, Node] = {}
    for node in reversed(find_topo_sort([output_node])):
        if node not in partials:
            continue
        grad = partials[node][0]
        for extra in partials[node][1:]:
            grad = add_op(grad, extra)
        adjoint[node] = grad
        if not node.inputs:
            continue
        try:
            input_grads = node.op.gradient(node, grad)
        except GradientError as err:
            raise GradientError(f"cannot differentiate {output_node.name}: {err}") from None
        for parent, parent_grad in zip(node.inputs, input_grads):
            if parent_grad is not None:
                partials.setdefault(parent, []).append(parent_grad)
    return [adjoint[n] if n in adjoint else zeroslike_op(n) for n in node_list]
