"""Matrix products: the fusion anchor whose elementwise consumers join its kernel, and the
panel layout its B takes when B is constant."""

from __future__ import annotations

import math

import numpy as np

from dlsys.checks import check_flag
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.layout import ConstantLayoutOp
from dlsys.ops.reduce import broadcastto_op
from dlsys.ops.shapes import apply_rule, matmul_shape, sum_to_shape


class MatMulOp(Op):
    """``op(A) @ op(B)`` as ``numpy.matmul``, where ``op`` transposes the last two axes when
    ``trans_A``/``trans_B`` ask: matrices, or stacks of them whose batch axes broadcast.

    A gradient node may carry a third input, ``like``: its value is then the product summed
    down to ``like``'s shape (the adjoint of the batch broadcast), computed in the product's
    own kernel (see ``_kernel``).
    """

    name = "MatMul"
    fusion_anchor = True
    packable_input = 1

    def __call__(self, a: Node, b: Node, trans_A: bool = False, trans_B: bool = False) -> Node:
        return Node(self, [a, b], {"trans_A": check_flag("trans_A", trans_A),
                                   "trans_B": check_flag("trans_B", trans_B)})

    def summed_to(self, a: Node, b: Node, trans_A: bool, trans_B: bool, like: Node) -> Node:
        """``op(a) @ op(b)`` summed down to ``like``'s shape (``like`` lends only its shape)."""
        return Node(self, [a, b, like], {"trans_A": trans_A, "trans_B": trans_B})

    def describe(self, node):
        a, b = node.inputs[:2]
        ta = ".T" if node.attrs["trans_A"] else ""
        tb = ".T" if node.attrs["trans_B"] else ""
        return f"MatMul({short_name(a)}{ta}, {short_name(b)}{tb})"

    def kernel_inputs(self, node):
        return node.inputs[:2]

    def _operands(self, node, input_shapes) -> tuple:
        return (tuple(input_shapes[0]), node.attrs["trans_A"], tuple(input_shapes[1]),
                node.attrs["trans_B"])

    def infer_shape(self, node, input_shapes):
        product = apply_rule(node, input_shapes, matmul_shape,
                             *self._operands(node, input_shapes))
        if len(node.inputs) == 3:
            return apply_rule(node, input_shapes, sum_to_shape, product, input_shapes[2])
        return product

    def _kernel(self, node, input_shapes) -> tuple[str, tuple]:
        """The kernel family (``"matmul"`` or ``"batched"``) and its leading parameters.

        The tuned 2-D kernel serves matrices, and also operands whose batch axes fold into
        its rows with no copy: an untransposed stack times a matrix (a dense layer over a
        sequence, M = every row of the stack), and a transposed stack times a stack of the
        same batch summed to a matrix (that layer's weight gradient, K = every row). Every
        other case is a batched product, summed in the same kernel where ``like`` asks."""
        operands = self._operands(node, input_shapes)
        shape_a, trans_a, shape_b, trans_b = operands
        product = matmul_shape(*operands)
        out = tuple(input_shapes[2]) if len(node.inputs) == 3 else product
        if out == product and len(shape_b) == 2 and (len(shape_a) == 2 or not trans_a):
            return "matmul", operands
        if (len(out) == 2 and trans_a and not trans_b and len(shape_a) >= 3
                and shape_a[:-2] == shape_b[:-2]):
            return "matmul", operands
        return "batched", (*operands, out)

    def gradient(self, node, output_grad):
        a, b = node.inputs[:2]
        g = output_grad
        ta, tb = node.attrs["trans_A"], node.attrs["trans_B"]
        if len(node.inputs) == 3:
            # A summed product's gradient is its output gradient broadcast back over the
            # summed axes; the unsummed product only lends its shape (and is never computed).
            g = broadcastto_op(g, matmul_op(a, b, ta, tb))
        # With C = op(A) op(B): dop(A) = G op(B)^T and dop(B) = op(A)^T G; transposing back
        # where op transposed gives each case without explicit transpose nodes. Each is
        # summed to its input's shape, over the batch axes that input was broadcast along.
        if not ta and not tb:
            grads = [(g, b, False, True), (a, g, True, False)]
        elif ta and not tb:
            grads = [(b, g, False, True), (a, g, False, False)]
        elif not ta and tb:
            grads = [(g, b, False, False), (g, a, True, False)]
        else:
            grads = [(b, g, True, True), (g, a, True, True)]
        return [self.summed_to(*grads[0], a), self.summed_to(*grads[1], b),
                *([None] if len(node.inputs) == 3 else [])]

    def kernel_spec(self, node, input_shapes, output_shape):
        family, params = self._kernel(node, input_shapes)
        if family == "batched":
            return KernelSpec("batched_matmul", (*params, ()))
        return KernelSpec("matmul", params)

    def fused_kernel_spec(self, node, shapes, epilogue):
        family, params = self._kernel(node, [shapes[i] for i in node.inputs])
        kind = "batched_matmul" if family == "batched" else "matmul_epilogue"
        return KernelSpec(kind, (*params, tuple(epilogue)))

    def packed_kernel_spec(self, node, shapes, spec, dtype):
        if spec.kind not in ("matmul", "matmul_epilogue") or len(shapes[node.inputs[1]]) != 2:
            return None  # only a matrix B is packed in panels
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

    def flops(self, node, input_shapes, output_shape):
        # One multiply and one add per element of the product and step of the inner axis.
        shape_a, trans_a, _, _ = self._operands(node, input_shapes)
        inner = shape_a[-2] if trans_a else shape_a[-1]
        product = matmul_shape(*self._operands(node, input_shapes))
        return 2 * math.prod(product) * inner

    def reference(self, node, a, b, like=None):
        product = np.matmul(np.swapaxes(a, -1, -2) if node.attrs["trans_A"] else a,
                            np.swapaxes(b, -1, -2) if node.attrs["trans_B"] else b)
        if like is None:
            return product
        lead = product.ndim - like.ndim
        summed = product.sum(axis=tuple(range(lead)))
        axes = tuple(d for d, n in enumerate(like.shape) if n == 1 and summed.shape[d] != 1)
        return summed.sum(axis=axes, keepdims=True)


matmul_op = MatMulOp()


class PackPanelsOp(ConstantLayoutOp):
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
