"""Layout operators: the same elements in another order (a transpose), or some of them
kept in place (a triangle of each matrix)."""

from __future__ import annotations

import numbers

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, GradientError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text


class ConstantLayoutOp(Op):
    """An operand laid out once for the kernel that reads it (a matmul's B in panels, a
    convolution's filters in panels or transformed for Winograd's filtering): made by the
    constant-packing pass (``passes.prepack``) after differentiation, from values that do
    not change between runs, so it has no gradient."""

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: a {self.name} layout is made for inference, after "
                            f"differentiation")


def check_perm(where: str, perm) -> tuple[int, ...] | None:
    """``perm`` as a tuple of distinct ints, or None (reverse the axes, numpy's default).
    Negative entries and the rank are checked by the shape rule, once the rank is known."""
    if perm is None:
        return None
    if not isinstance(perm, (tuple, list)) or not all(
            isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in perm):
        raise ArgumentTypeError(f"{where}: perm must be a tuple of ints or None, got {perm!r}")
    perm = tuple(int(p) for p in perm)
    if len(set(perm)) != len(perm):
        raise ArgumentError(f"{where}: perm {perm} names an axis more than once")
    return perm


def resolve_perm(perm: tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    """The permutation of ``rank`` axes that ``perm`` names (None: reversed), each axis
    non-negative (``-1`` is the last, as numpy and PyTorch read it)."""
    if perm is None:
        return tuple(range(rank - 1, -1, -1))
    normal = tuple(p % rank if -rank <= p < rank else p for p in perm)
    if sorted(normal) != list(range(rank)):
        raise ShapeError(f"perm {perm} is not a permutation of the {rank} axes")
    return normal


class TransposeOp(Op):
    """``x.transpose(perm)``, as numpy's, for any rank: output axis ``d`` is input axis
    ``perm[d]`` (negative axes count from the end)."""

    name = "Transpose"

    def __call__(self, x: Node, perm=None) -> Node:
        x = check_node(self.name, "x", x)
        return Node(self, [x], {"perm": check_perm(f"Transpose({short_name(x)})", perm)})

    def describe(self, node):
        perm = node.attrs["perm"]
        return f"Transpose({short_name(node.inputs[0])}{'' if perm is None else f', {perm}'})"

    def _perm(self, node, shape) -> tuple[int, ...]:
        try:
            return resolve_perm(node.attrs["perm"], len(shape))
        except ShapeError as err:
            raise ShapeError(f"{node.name}: {err} ({inputs_text(node, [shape])})") from None

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        return tuple(shape[p] for p in self._perm(node, shape))

    def is_alias(self, node, input_shapes):
        # Moving only size-1 axes leaves the data in the same order: a view, no kernel. An
        # alias hands the output its input's storage, viewed with the output's shape.
        shape = tuple(input_shapes[0])
        moved = [p for p in self._perm(node, shape) if shape[p] != 1]
        return moved == sorted(moved)

    def gradient(self, node, output_grad):
        # The adjoint of a permutation is its inverse. It is resolved without the rank for
        # an explicit perm (which names every axis, so its length is the rank); None
        # (reversal) is its own inverse.
        perm = node.attrs["perm"]
        if perm is None:
            return [transpose_op(output_grad)]
        inverse = [0] * len(perm)
        for d, p in enumerate(perm):
            inverse[p % len(perm)] = d
        return [transpose_op(output_grad, tuple(inverse))]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        return KernelSpec("transpose", (shape, self._perm(node, shape)))

    def reference(self, node, x):
        return np.transpose(x, node.attrs["perm"])


transpose_op = TransposeOp()


class TriluOp(Op):
    """``numpy.triu(x, k)`` (``upper``) or ``numpy.tril(x, k)`` over the last two axes: the
    elements on and above (below) the ``k``-th diagonal kept, the others zero."""

    name = "Trilu"

    def __call__(self, x: Node, upper: bool = True, k: int = 0) -> Node:
        x = check_node(self.name, "x", x)
        where = f"Trilu({short_name(x)})"
        if not isinstance(upper, (bool, np.bool_)):
            raise ArgumentTypeError(f"{where}: upper must be a bool, got {upper!r}")
        if not isinstance(k, numbers.Integral) or isinstance(k, (bool, np.bool_)):
            raise ArgumentTypeError(f"{where}: k must be an int, got {k!r}")
        return Node(self, [x], {"upper": bool(upper), "k": int(k)})

    def describe(self, node):
        a = node.attrs
        return f"{'Triu' if a['upper'] else 'Tril'}({short_name(node.inputs[0])}, {a['k']})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        if len(shape) < 2:
            raise ShapeError(f"{node.name}: needs at least 2 axes (a matrix, or a stack of "
                             f"them) ({inputs_text(node, input_shapes)})")
        return shape

    def gradient(self, node, output_grad):
        # A mask: its adjoint is the same mask.
        return [trilu_op(output_grad, node.attrs["upper"], node.attrs["k"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("trilu", (tuple(output_shape), node.attrs["upper"], node.attrs["k"]))

    def reference(self, node, x):
        return (np.triu if node.attrs["upper"] else np.tril)(x, node.attrs["k"])


trilu_op = TriluOp()
