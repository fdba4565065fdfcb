"""Cumulative sums along an axis (numpy's ``cumsum``; ONNX's CumSum, with its ``exclusive``
and ``reverse`` options) and their adjoint, which is the cumulative sum the other way."""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_flag
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.slicing import _is_int


def _axis(node: Node, shape) -> int:
    axis, rank = node.attrs["axis"], len(shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"{node.name}: axis {axis} is out of range for "
                         f"{short_name(node.inputs[0])} of shape {tuple(shape)}")
    return axis % rank


def cumulative_sum_reference(x: np.ndarray, axis: int, exclusive: bool,
                             reverse: bool) -> np.ndarray:
    """The numpy meaning of ``cumsum_op``."""
    line = np.flip(x, axis) if reverse else x
    total = np.cumsum(line, axis=axis, dtype=x.dtype)
    if exclusive:
        total = total - line
    return np.flip(total, axis) if reverse else total


class CumSumOp(Op):
    """``cumsum_op(x, axis, exclusive, reverse)``: along ``axis``, the sum of ``x`` up to and
    including each position; with ``exclusive`` the position itself is left out (the first
    is 0), with ``reverse`` the sums run from the end."""

    name = "CumSum"

    def __call__(self, x: Node, axis: int, exclusive: bool = False,
                 reverse: bool = False) -> Node:
        x = check_node(self.name, "x", x)
        where = f"CumSum({short_name(x)})"
        if not _is_int(axis):
            raise ArgumentTypeError(f"{where}: axis must be an int, got {axis!r}")
        return Node(self, [x], {"axis": int(axis),
                                "exclusive": check_flag(f"{where}: exclusive", exclusive),
                                "reverse": check_flag(f"{where}: reverse", reverse)})

    def describe(self, node):
        options = "".join(f", {name}" for name in ("exclusive", "reverse")
                          if node.attrs[name])
        return f"CumSum({short_name(node.inputs[0])}, axis={node.attrs['axis']}{options})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        _axis(node, shape)
        return shape

    def gradient(self, node, output_grad):
        # Each input position feeds the totals after it (before it, reversed): the
        # gradient gathers the output gradients the opposite way, with the same exclusion.
        return [cumsum_op(output_grad, node.attrs["axis"], node.attrs["exclusive"],
                          not node.attrs["reverse"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        return KernelSpec("cumulative_sum", (shape, _axis(node, shape),
                                             node.attrs["exclusive"], node.attrs["reverse"]))

    def reference(self, node, x):
        return cumulative_sum_reference(x, _axis(node, x.shape), node.attrs["exclusive"],
                                        node.attrs["reverse"])


cumsum_op = CumSumOp()

__all__ = ["CumSumOp", "cumsum_op", "cumulative_sum_reference"]
