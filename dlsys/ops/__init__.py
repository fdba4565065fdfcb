"""The operators, one module per family, and the arithmetic of graph nodes.

Every operator class keeps its shape rule, gradient, traits, kernel spec and numpy reference
together (see ``dlsys.graph.Op``). ``ALL_OPS`` lists every operator singleton and
``ELEMENTWISE_OPS`` the elementwise ones, so test tables pick a new operator up by its
registration here.
"""

from __future__ import annotations

from dlsys.graph import Node, Op
from dlsys.ops.conv import conv2d_op
from dlsys.ops.elementwise import (
    ElementwiseOp,
    add_byconst_op,
    add_op,
    mul_byconst_op,
    mul_op,
    oneslike_op,
    relu_gradient_op,
    relu_op,
    sigmoid_op,
    zeroslike_op,
)
from dlsys.ops.linalg import matmul_op
from dlsys.ops.loss import softmax_op, softmaxcrossentropy_gradient_op, softmaxcrossentropy_op
from dlsys.ops.placeholder import Variable, placeholder_op
from dlsys.ops.reduce import broadcastto_op, reducesumaxiszero_op, reducesumto_op

ALL_OPS: list[Op] = [
    placeholder_op, add_op, mul_op, add_byconst_op, mul_byconst_op, relu_op, relu_gradient_op,
    sigmoid_op, oneslike_op, zeroslike_op, matmul_op, reducesumaxiszero_op, reducesumto_op,
    broadcastto_op, softmaxcrossentropy_op, softmaxcrossentropy_gradient_op, softmax_op,
    conv2d_op,
]
ELEMENTWISE_OPS: list[ElementwiseOp] = [op for op in ALL_OPS if isinstance(op, ElementwiseOp)]


# Python numbers on either side become by-constant ops, as users of the course API expect.
def _add(self: Node, other) -> Node:
    return add_op(self, other) if isinstance(other, Node) else add_byconst_op(self, other)


def _mul(self: Node, other) -> Node:
    return mul_op(self, other) if isinstance(other, Node) else mul_byconst_op(self, other)


Node.__add__ = Node.__radd__ = _add
Node.__mul__ = Node.__rmul__ = _mul

__all__ = [
    "ALL_OPS", "ELEMENTWISE_OPS", "Variable", "placeholder_op", "add_op", "mul_op",
    "add_byconst_op", "mul_byconst_op", "relu_op", "relu_gradient_op", "sigmoid_op",
    "oneslike_op", "zeroslike_op", "matmul_op", "reducesumaxiszero_op", "reducesumto_op",
    "broadcastto_op", "softmaxcrossentropy_op", "softmaxcrossentropy_gradient_op",
    "softmax_op", "conv2d_op",
]
