"""Matrix products: the fusion anchor whose elementwise consumers join its kernel, and the
panel layout its B takes when B is constant."""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_flag
from dlsys.errors import GradientError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.shapes import apply_rule, matmul_shape


class MatMulOp(Op):
    """``op(A) @ op(B)``, where ``op`` transposes when ``trans_A``/``trans_B`` ask."""

    name = "MatMul"
    fusion_anchor = True
    packable_input = 1

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

    def packed_kernel_spec(self, node, shapes, spec, dtype):
        operands = self._operands(node, [shapes[i] for i in node.inputs])
        # The tiles are the kernel layer's choice for this CPU; the operator only lays B out
        # in the panels they ask for.
        tiles = spec.packed_layout(dtype)
        if tiles is None:
            return None
        packed = pack_panels_op(node.inputs[1], node.attrs["trans_B"], tiles[1])
        # The unpacked spec is this operator's own: "matmul", or "matmul_epilogue" whose
        # last parameter is the fused epilogue.
        epilogue = spec.params[-1] if spec.kind == "matmul_epilogue" else ()
        return packed, KernelSpec("matmul_prepacked", (*operands, tiles, epilogue))

    def reference(self, node, a, b):
        return (a.T if node.attrs["trans_A"] else a) @ (b.T if node.attrs["trans_B"] else b)


matmul_op = MatMulOp()


class PackPanelsOp(Op):
    """``op(B)`` (K x N) as panels of ``panel`` columns, shape (ceil(N / panel), K, panel),
    the last one zero-filled: the layout the tuned matmul streams B in. Made by the
    constant-packing pass (``passes.prepack``) after differentiation, so it has no gradient."""

    name = "PackPanels"

    def __call__(self, b: Node, trans_B: bool, panel: int) -> Node:
        return Node(self, [b], {"trans_B": check_flag("trans_B", trans_B), "panel": int(panel)})

    def _k_n(self, node, shape) -> tuple[int, int]:
        return (shape[1], shape[0]) if node.attrs["trans_B"] else tuple(shape)

    def infer_shape(self, node, input_shapes):
        k, n = self._k_n(node, input_shapes[0])
        panel = node.attrs["panel"]
        return (-(-n // panel), k, panel)

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: a packed layout is made for inference, after "
                            f"differentiation")

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("pack_panels", (tuple(input_shapes[0]), node.attrs["trans_B"],
                                          node.attrs["panel"]))

    def reference(self, node, b):
        columns = b.T if node.attrs["trans_B"] else b
        k, n = columns.shape
        panel = node.attrs["panel"]
        padded = np.zeros((k, -(-n // panel) * panel), dtype=b.dtype)
        padded[:, :n] = columns
        return padded.reshape(k, -1, panel).transpose(1, 0, 2).copy()


pack_panels_op = PackPanelsOp()
