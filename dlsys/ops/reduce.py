"""Sums and broadcasts: the operators that change a tensor's shape by numpy's broadcast rules."""

from __future__ import annotations

import numpy as np

from dlsys.errors import ShapeError
from dlsys.graph import Node, Op
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.shapes import apply_rule, broadcast_to_shape, sum_to_shape


def _sum_to(a: np.ndarray, shape: tuple) -> np.ndarray:
    lead = a.ndim - len(shape)
    a = a.sum(axis=tuple(range(lead))) if lead else a
    axes = tuple(d for d, n in enumerate(shape) if n == 1 and a.shape[d] != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a


class ReduceSumAxisZeroOp(Op):
    name = "ReduceSumAxisZero"

    def __call__(self, node: Node) -> Node:
        return Node(self, [node])

    def infer_shape(self, node, input_shapes):
        if len(input_shapes[0]) < 2:
            # Summing a vector to a scalar would give shape (); dlsys keeps at least one axis.
            raise ShapeError(f"{node.name}: input {node.inputs[0].name} needs at least 2 "
                             f"dimensions, got shape {tuple(input_shapes[0])}")
        return tuple(input_shapes[0][1:])

    def gradient(self, node, output_grad):
        return [broadcastto_op(output_grad, node.inputs[0])]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("reduce_sum_to", (tuple(input_shapes[0]), tuple(output_shape)))

    def reference(self, node, a):
        return a.sum(axis=0)


class _ToShapeOfOp(Op):
    """``op(a, b)`` whose output has ``b``'s shape: ``b`` lends its shape, never its values,
    and where ``a`` already has that shape the op is the identity (an alias, no kernel).
    ``shape_rule(shape, to_shape)`` checks the pair; ``kernel_kind`` computes it."""

    kernel_kind = ""

    @staticmethod
    def shape_rule(shape, to_shape):
        raise NotImplementedError

    def __call__(self, a: Node, b: Node) -> Node:
        return Node(self, [a, b])

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def is_alias(self, node, input_shapes):
        return tuple(input_shapes[0]) == tuple(input_shapes[1])

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self.shape_rule, *input_shapes)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec(self.kernel_kind, (tuple(input_shapes[0]), tuple(output_shape)))


class ReduceSumToOp(_ToShapeOfOp):
    """Sum ``a`` down to ``b``'s shape: the adjoint of broadcasting ``b``'s shape to ``a``'s."""

    name = "ReduceSumTo"
    kernel_kind = "reduce_sum_to"
    shape_rule = staticmethod(sum_to_shape)

    def gradient(self, node, output_grad):
        return [broadcastto_op(output_grad, node.inputs[0]), None]

    def reference(self, node, a, b):
        return _sum_to(a, b.shape)


class BroadcastToOp(_ToShapeOfOp):
    """``a`` broadcast to the shape of ``b`` (numpy rules: new leading axes, size-1 axes)."""

    name = "BroadcastTo"
    kernel_kind = "broadcast_to"
    shape_rule = staticmethod(broadcast_to_shape)
    broadcasts_input = True

    def gradient(self, node, output_grad):
        return [reducesumto_op(output_grad, node.inputs[0]), None]

    def reference(self, node, a, b):
        return np.broadcast_to(a, b.shape).copy()


reducesumaxiszero_op = ReduceSumAxisZeroOp()
reducesumto_op = ReduceSumToOp()
broadcastto_op = BroadcastToOp()
