"""ONNX's elementwise arithmetic and activations as dlsys graph nodes (see ``ops``)."""

from __future__ import annotations

import numpy as np

from dlsys.onnx.ops import Context, converter, scalar_operand
from dlsys.ops import (
    add_op,
    div_op,
    mul_op,
    relu_op,
    sigmoid_op,
    sub_op,
    tanh_op,
)

# ----------------------------------------------------------------- elementwise
_BINARY = {"Add": (add_op, np.add), "Sub": (sub_op, np.subtract), "Mul": (mul_op, np.multiply),
           "Div": (div_op, np.divide)}


@converter("Add", "Sub", "Mul", "Div")
def binary(ctx: Context, a, b):
    op, numpy_op = _BINARY[ctx.node.op_type]
    constant_a, constant_b = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    if constant_a and constant_b:
        # Both sides fixed by the file: arithmetic on the file's constants, as ONNX's own
        # constant folding would do, before any graph exists.
        return numpy_op(a, b).astype(np.result_type(a, b))
    if constant_a or constant_b:
        number = scalar_operand(ctx, a if constant_a else b)
        node = b if constant_a else a
        # Node arithmetic with a number builds dlsys's by-constant operators, each side
        # rounding as the tensor operator would.
        if ctx.node.op_type == "Add":
            return node + number
        if ctx.node.op_type == "Mul":
            return node * number
        if ctx.node.op_type == "Sub":
            return number - node if constant_a else node - number
        return number / node if constant_a else node / number
    return op(a, b)


@converter("Relu")
def relu(ctx, x):
    return relu_op(ctx.node_input(0, x))


@converter("Sigmoid")
def sigmoid(ctx, x):
    return sigmoid_op(ctx.node_input(0, x))


@converter("Tanh")
def tanh(ctx, x):
    return tanh_op(ctx.node_input(0, x))
