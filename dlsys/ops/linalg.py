"""Matrix products: the fusion anchor whose elementwise consumers join its kernel."""

from __future__ import annotations

from dlsys.checks import check_flag
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.shapes import apply_rule, matmul_shape


class MatMulOp(Op):
    """``op(A) @ op(B)``, where ``op`` transposes when ``trans_A``/``trans_B`` ask."""

    name = "MatMul"
    fusion_anchor = True

    def __call__(self, a: Node, b: Node, trans_A: bool = False, trans_B: bool = False) -> Node:
        return Node(self, [a, b], {"trans_A": check_flag("trans_A", trans_A),
                                   "trans_B": check_flag("trans_B", trans_B)})

    def describe(self, node):
        a, b = node.inputs
        ta = ".T" if node.attrs["trans_A"] else ""
        tb = ".T" if node.attrs["trans_B"] else ""
        return f"MatMul({short_name(a)}{ta}, {short_name(b)}{tb})"

    def _operands(self, node, input_shapes) -> tuple:
        return (tuple(input_shapes[0]), node.attrs["trans_A"], tuple(input_shapes[1]),
                node.attrs["trans_B"])

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, matmul_shape, *self._operands(node, input_shapes))

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

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("matmul", self._operands(node, input_shapes))

    def fused_kernel_spec(self, node, shapes, epilogue):
        operands = self._operands(node, [shapes[i] for i in node.inputs])
        return KernelSpec("matmul_epilogue", (*operands, tuple(epilogue)))

    def reference(self, node, a, b):
        return (a.T if node.attrs["trans_A"] else a) @ (b.T if node.attrs["trans_B"] else b)


matmul_op = MatMulOp()
