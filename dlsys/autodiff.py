"""The user API: variables, the operator table, reverse-mode ``gradients`` and the executor.

Each operator class below keeps its shape rule, gradient, in-place option and kernel
together, so adding an operator touches one spot. Operators are used through their
singletons (``matmul_op(a, b)``), as in the course assignment this project grew from.
"""

from __future__ import annotations

import numbers

import numpy as np

from dlsys import tvm_op
from dlsys.errors import ArgumentTypeError, GradientError, ShapeError
from dlsys.graph import Node, Op, Shape, find_topo_sort, short_name

__all__ = [
    "Node", "Op", "Variable", "gradients", "find_topo_sort", "softmax_func", "Executor",
    "add_op", "add_byconst_op", "mul_op", "mul_byconst_op", "matmul_op", "placeholder_op",
    "oneslike_op", "zeroslike_op", "reducesumaxiszero_op", "reducesumto_op", "broadcastto_op",
    "softmaxcrossentropy_op", "softmaxcrossentropy_gradient_op", "softmax_op", "relu_op",
    "relu_gradient_op", "conv2d_op",
]

_TARGET_HOST = "llvm"


def _shapes_text(node: Node, shapes: list[Shape]) -> str:
    return ", ".join(f"{i.name} {tuple(s)}" for i, s in zip(node.inputs, shapes))


def _same_shape(node: Node, shapes: list[Shape]) -> Shape:
    if any(s != shapes[0] for s in shapes):
        raise ShapeError(f"{node.name}: inputs must have the same shape, got "
                         f"{_shapes_text(node, shapes)}")
    return shapes[0]


class PlaceholderOp(Op):
    """A value fed at run time (inputs, labels and parameters)."""

    name = "Placeholder"
    is_placeholder = True

    def __call__(self, name: str) -> Node:
        return Node(self, [], name=name)

    def infer_shape(self, node, input_shapes):
        raise ShapeError(f"placeholder {node.name} has no value: feed it in feed_dict")

    def gradient(self, node, output_grad):
        return []


class AddOp(Op):
    """``a + b`` with numpy broadcasting."""

    name = "Add"
    inplace_input = 0

    def __call__(self, a: Node, b: Node) -> Node:
        return Node(self, [a, b])

    def describe(self, node):
        return f"({short_name(node.inputs[0])}+{short_name(node.inputs[1])})"

    def infer_shape(self, node, input_shapes):
        out = tvm_op.broadcast_shape(*input_shapes)
        if out is None:
            raise ShapeError(f"{node.name}: shapes do not broadcast: "
                             f"{_shapes_text(node, input_shapes)}")
        return out

    def gradient(self, node, output_grad):
        a, b = node.inputs
        return [reducesumto_op(output_grad, a), reducesumto_op(output_grad, b)]

    def epilogue(self, node, inputs, chain_input, shapes):
        a, b = inputs
        if a is b or shapes[chain_input] != shapes[node]:
            return None
        other = b if a is chain_input else a
        # A bias row broadcast over the batch: read the vector itself, skip the broadcast.
        vector = other.inputs[0] if isinstance(other.op, BroadcastToOp) else other
        if len(shapes[node]) == 2 and shapes[vector] == (shapes[node][1],):
            return ("bias_add",), [vector]
        if shapes[other] == shapes[node]:
            return ("add",), [other]
        return None

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        if input_shapes[0] == input_shapes[1]:
            return tvm_op.make_elemwise_add(output_shape, target, _TARGET_HOST, "add", dtype)
        return tvm_op.make_broadcast_binary("add", *input_shapes, target, _TARGET_HOST, "add",
                                            dtype)


class MulOp(AddOp):
    """``a * b`` with numpy broadcasting."""

    name = "Mul"

    def describe(self, node):
        return f"({short_name(node.inputs[0])}*{short_name(node.inputs[1])})"

    def gradient(self, node, output_grad):
        a, b = node.inputs
        return [reducesumto_op(output_grad * b, a), reducesumto_op(output_grad * a, b)]

    def epilogue(self, node, inputs, chain_input, shapes):
        return None

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        if input_shapes[0] == input_shapes[1]:
            return tvm_op.make_elemwise_mul(output_shape, target, _TARGET_HOST, "mul", dtype)
        return tvm_op.make_broadcast_binary("mul", *input_shapes, target, _TARGET_HOST, "mul",
                                            dtype)


class AddByConstOp(Op):
    name = "AddByConst"
    inplace_input = 0

    def __call__(self, a: Node, const_val: float) -> Node:
        if isinstance(const_val, bool) or not isinstance(const_val, numbers.Real):
            raise ArgumentTypeError(f"{self.name}({a.name}, ...): the constant must be a real "
                                    f"number or a Node, got {type(const_val).__name__}")
        return Node(self, [a], {"const": float(const_val)})

    def describe(self, node):
        return f"({short_name(node.inputs[0])}+{node.attrs['const']:g})"

    def infer_shape(self, node, input_shapes):
        return input_shapes[0]

    def gradient(self, node, output_grad):
        return [output_grad]

    def epilogue(self, node, inputs, chain_input, shapes):
        return ("add_const", node.attrs["const"]), []

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_elemwise_add_by_const(output_shape, node.attrs["const"], target,
                                                 _TARGET_HOST, "add_const", dtype)


class MulByConstOp(AddByConstOp):
    name = "MulByConst"

    def describe(self, node):
        return f"({short_name(node.inputs[0])}*{node.attrs['const']:g})"

    def gradient(self, node, output_grad):
        return [output_grad * node.attrs["const"]]

    def epilogue(self, node, inputs, chain_input, shapes):
        return ("mul_const", node.attrs["const"]), []

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_elemwise_mul_by_const(output_shape, node.attrs["const"], target,
                                                 _TARGET_HOST, "mul_const", dtype)


class MatMulOp(Op):
    """``op(A) @ op(B)``, where ``op`` transposes when ``trans_A``/``trans_B`` ask."""

    name = "MatMul"
    fusion_anchor = True

    def __call__(self, a: Node, b: Node, trans_A: bool = False, trans_B: bool = False) -> Node:
        return Node(self, [a, b], {"trans_A": tvm_op.check_flag("trans_A", trans_A),
                                   "trans_B": tvm_op.check_flag("trans_B", trans_B)})

    def describe(self, node):
        a, b = node.inputs
        ta = ".T" if node.attrs["trans_A"] else ""
        tb = ".T" if node.attrs["trans_B"] else ""
        return f"MatMul({short_name(a)}{ta}, {short_name(b)}{tb})"

    def infer_shape(self, node, input_shapes):
        for i, shape in enumerate(input_shapes):
            if len(shape) != 2:
                raise ShapeError(f"{node.name}: input {node.inputs[i].name} must be a matrix, "
                                 f"got shape {tuple(shape)}")
        (ra, ca), (rb, cb) = input_shapes
        m, k_a = (ca, ra) if node.attrs["trans_A"] else (ra, ca)
        k_b, n = (cb, rb) if node.attrs["trans_B"] else (rb, cb)
        if k_a != k_b:
            raise ShapeError(f"{node.name}: inner dimensions {k_a} and {k_b} differ "
                             f"({_shapes_text(node, input_shapes)})")
        return (m, n)

    def gradient(self, node, output_grad):
        a, b = node.inputs
        g = output_grad
        ta, tb = node.attrs["trans_A"], node.attrs["trans_B"]
        # With C = op(A) op(B): dop(A) = G op(B)^T and dop(B) = op(A)^T G; transposing back
        # where op transposed gives each case without explicit transpose nodes.
        if not ta and not tb:
            return [matmul_op(g, b, False, True), matmul_op(a, g, True, False)]
        if ta and not tb:
            return [matmul_op(b, g, False, True), matmul_op(a, g, False, False)]
        if not ta and tb:
            return [matmul_op(g, b, False, False), matmul_op(g, a, True, False)]
        return [matmul_op(b, g, True, True), matmul_op(g, a, True, True)]

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_matrix_mul(input_shapes[0], node.attrs["trans_A"], input_shapes[1],
                                      node.attrs["trans_B"], target, _TARGET_HOST, "matmul",
                                      dtype)


class FillLikeOp(Op):
    """A constant tensor of the input's shape (the input's values are never read)."""

    def __init__(self, name: str, value: float):
        self.name = name
        self.value = value

    def __call__(self, node: Node) -> Node:
        return Node(self, [node])

    def infer_shape(self, node, input_shapes):
        return input_shapes[0]

    def kernel_inputs(self, node):
        return []

    def gradient(self, node, output_grad):
        return [None]

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_fill(output_shape, self.value, target, _TARGET_HOST, "fill", dtype)


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

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_reduce_sum_axis_zero(input_shapes[0], target, _TARGET_HOST, "rsum",
                                                dtype)


class _ToShapeOfOp(Op):
    """``op(a, b)`` whose output has ``b``'s shape: ``b`` lends its shape, never its values,
    and where ``a`` already has that shape the op is the identity (an alias, no kernel)."""

    def __call__(self, a: Node, b: Node) -> Node:
        return Node(self, [a, b])

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def is_alias(self, node, input_shapes):
        return tuple(input_shapes[0]) == tuple(input_shapes[1])


class ReduceSumToOp(_ToShapeOfOp):
    """Sum ``a`` down to ``b``'s shape: the adjoint of broadcasting ``b``'s shape to ``a``'s."""

    name = "ReduceSumTo"

    def infer_shape(self, node, input_shapes):
        shape, to_shape = input_shapes
        if tvm_op.broadcast_shape(to_shape, shape) != tuple(shape):
            raise ShapeError(f"{node.name}: cannot sum shape {tuple(shape)} down to "
                             f"{tuple(to_shape)}")
        return tuple(to_shape)

    def gradient(self, node, output_grad):
        return [broadcastto_op(output_grad, node.inputs[0]), None]

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_reduce_sum_to(input_shapes[0], output_shape, target, _TARGET_HOST,
                                         "sum_to", dtype)


class BroadcastToOp(_ToShapeOfOp):
    """``a`` broadcast to the shape of ``b`` (numpy rules: new leading axes, size-1 axes)."""

    name = "BroadcastTo"

    def infer_shape(self, node, input_shapes):
        shape, to_shape = input_shapes
        if tvm_op.broadcast_shape(shape, to_shape) != tuple(to_shape):
            raise ShapeError(f"{node.name}: cannot broadcast {node.inputs[0].name} of shape "
                             f"{tuple(shape)} to {node.inputs[1].name}'s shape {tuple(to_shape)}")
        return tuple(to_shape)

    def gradient(self, node, output_grad):
        return [reducesumto_op(output_grad, node.inputs[0]), None]

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_broadcast_to(input_shapes[0], output_shape, target, _TARGET_HOST,
                                        "broadcast", dtype)


def _check_logits(node: Node, input_shapes: list[Shape]) -> None:
    if len(input_shapes[0]) != 2:
        raise ShapeError(f"{node.name}: logits {node.inputs[0].name} must be a matrix "
                         f"(batch, classes), got shape {tuple(input_shapes[0])}")


class SoftmaxCrossEntropyOp(Op):
    """Mean over the batch of ``-sum(labels * log_softmax(logits))``; output shape ``(1,)``.

    Labels are treated as constants (no gradient flows into them), as in the course assignment.
    """

    name = "SoftmaxXEntropy"

    def __call__(self, logits: Node, labels: Node) -> Node:
        return Node(self, [logits, labels])

    def infer_shape(self, node, input_shapes):
        _check_logits(node, input_shapes)
        _same_shape(node, input_shapes)
        return (1,)

    def gradient(self, node, output_grad):
        logits, labels = node.inputs
        return [softmaxcrossentropy_gradient_op(logits, labels, output_grad), None]

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_matrix_softmax_cross_entropy(input_shapes[0], target, _TARGET_HOST,
                                                        "sce", dtype)


class SoftmaxCrossEntropyGradientOp(Op):
    """``(softmax(logits) - labels) / batch * g``: the exact adjoint of the mean loss."""

    name = "SoftmaxXEntropyGrad"

    def __call__(self, logits: Node, labels: Node, output_grad: Node) -> Node:
        return Node(self, [logits, labels, output_grad])

    def infer_shape(self, node, input_shapes):
        _check_logits(node, input_shapes)
        _same_shape(node, input_shapes[:2])
        if tuple(input_shapes[2]) != (1,):
            raise ShapeError(f"{node.name}: upstream gradient {node.inputs[2].name} must have "
                             f"shape (1,), got {tuple(input_shapes[2])}")
        return tuple(input_shapes[0])

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_matrix_softmax_cross_entropy_gradient(output_shape, target,
                                                                 _TARGET_HOST, "sce_grad", dtype)


class SoftmaxOp(Op):
    name = "Softmax"

    def __call__(self, node: Node) -> Node:
        return Node(self, [node])

    def infer_shape(self, node, input_shapes):
        _check_logits(node, input_shapes)
        return tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: Softmax has no gradient in dlsys; train with "
                            f"softmaxcrossentropy_op, whose gradient is exact and stable")

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_matrix_softmax(output_shape, target, _TARGET_HOST, "softmax", dtype)


class ReluOp(Op):
    name = "Relu"
    inplace_input = 0

    def __call__(self, node: Node) -> Node:
        return Node(self, [node])

    def infer_shape(self, node, input_shapes):
        return tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        return [relu_gradient_op(node.inputs[0], output_grad)]

    def epilogue(self, node, inputs, chain_input, shapes):
        return ("relu",), []

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_relu(output_shape, target, _TARGET_HOST, "relu", dtype)


class ReluGradientOp(Op):
    """``(a > 0) * g``."""

    name = "ReluGradient"
    inplace_input = 1

    def __call__(self, a: Node, output_grad: Node) -> Node:
        return Node(self, [a, output_grad])

    def infer_shape(self, node, input_shapes):
        return _same_shape(node, input_shapes)

    def gradient(self, node, output_grad):
        # Zero almost everywhere in a; linear in g with the same mask.
        return [None, relu_gradient_op(node.inputs[0], output_grad)]

    def epilogue(self, node, inputs, chain_input, shapes):
        mask, upstream = inputs
        if chain_input is not upstream or mask is upstream:
            return None
        return ("relu_mask",), [mask]

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_relu_gradient(output_shape, target, _TARGET_HOST, "relu_grad", dtype)


class Conv2dOp(Op):
    """NCHW convolution of images ``x`` with filters ``f``, stride 1, no padding (forward only)."""

    name = "Conv2d"

    def __call__(self, x: Node, f: Node) -> Node:
        return Node(self, [x, f])

    def infer_shape(self, node, input_shapes):
        shape_x, shape_f = input_shapes
        if len(shape_x) != 4 or len(shape_f) != 4:
            raise ShapeError(f"{node.name}: images and filters must be 4-d (NCHW, OIHW), got "
                             f"{_shapes_text(node, input_shapes)}")
        if shape_x[1] != shape_f[1]:
            raise ShapeError(f"{node.name}: images have {shape_x[1]} channels but filters "
                             f"expect {shape_f[1]} ({_shapes_text(node, input_shapes)})")
        if shape_f[2] > shape_x[2] or shape_f[3] > shape_x[3]:
            raise ShapeError(f"{node.name}: filters larger than images "
                             f"({_shapes_text(node, input_shapes)})")
        return (shape_x[0], shape_f[0], shape_x[2] - shape_f[2] + 1, shape_x[3] - shape_f[3] + 1)

    def make_kernel(self, node, input_shapes, output_shape, target, dtype):
        return tvm_op.make_conv2d(*input_shapes, target, _TARGET_HOST, "conv2d", dtype)


placeholder_op = PlaceholderOp()
add_op = AddOp()
mul_op = MulOp()
add_byconst_op = AddByConstOp()
mul_byconst_op = MulByConstOp()
matmul_op = MatMulOp()
oneslike_op = FillLikeOp("OnesLike", 1.0)
zeroslike_op = FillLikeOp("ZerosLike", 0.0)
reducesumaxiszero_op = ReduceSumAxisZeroOp()
reducesumto_op = ReduceSumToOp()
broadcastto_op = BroadcastToOp()
softmaxcrossentropy_op = SoftmaxCrossEntropyOp()
softmaxcrossentropy_gradient_op = SoftmaxCrossEntropyGradientOp()
softmax_op = SoftmaxOp()
relu_op = ReluOp()
relu_gradient_op = ReluGradientOp()
conv2d_op = Conv2dOp()


def Variable(name: str) -> Node:  # noqa: N802 - the course API's name
    """A placeholder: a value fed through ``feed_dict`` at every run."""
    return placeholder_op(name)


def gradients(output_node: Node, node_list: list[Node]) -> list[Node]:
    """Gradient nodes of ``output_node`` with respect to each node of ``node_list``.

    Reverse-mode: walk the graph in reverse topological order, summing each node's partial
    adjoints before asking its operator for the adjoints of its inputs. A node the output
    does not depend on gets a zeros gradient of its own shape.
    """
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


def softmax_func(y: np.ndarray) -> np.ndarray:
    """Numerically stable row softmax in numpy (a reference for tests and metrics)."""
    shifted = y - np.max(y, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=1, keepdims=True)


from dlsys.runtime.executor import Executor  # noqa: E402 - the executor needs the ops above
