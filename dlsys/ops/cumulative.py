"""Cumulative sums and products along an axis (numpy's ``cumsum`` and ``cumprod``; ONNX's
CumSum and CumProd, with their ``exclusive`` and ``reverse`` options). The sum's adjoint is
the cumulative sum the other way; the product's is its exclusive product times a reverse
recurrence of its own kernel (``CumProdAdjointOp``), exact where ``x`` holds zeros."""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_flag
from dlsys.errors import ArgumentTypeError, GradientError, ShapeError
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


def cumulative_reference(x: np.ndarray, axis: int, exclusive: bool, reverse: bool,
                         operation: str = "sum") -> np.ndarray:
    """The numpy meaning of ``cumsum_op`` (``operation="sum"``) and ``cumprod_op``."""
    line = np.flip(x, axis) if reverse else x
    if exclusive:
        empty = np.zeros_like if operation == "sum" else np.ones_like
        line = np.concatenate([empty(np.take(line, [0], axis)),
                               np.take(line, range(line.shape[axis] - 1), axis)], axis)
    running = np.cumsum if operation == "sum" else np.cumprod
    total = running(line, axis=axis, dtype=x.dtype)
    return np.flip(total, axis) if reverse else total


def cumulative_sum_reference(x: np.ndarray, axis: int, exclusive: bool,
                             reverse: bool) -> np.ndarray:
    """The numpy meaning of ``cumsum_op``."""
    return cumulative_reference(x, axis, exclusive, reverse, "sum")


class CumSumOp(Op):
    """``cumsum_op(x, axis, exclusive, reverse)``: along ``axis``, the sum of ``x`` up to and
    including each position; with ``exclusive`` the position itself is left out (the first
    is 0), with ``reverse`` the sums run from the end."""

    name = "CumSum"
    operation = "sum"

    def __call__(self, x: Node, axis: int, exclusive: bool = False,
                 reverse: bool = False) -> Node:
        x = check_node(self.name, "x", x)
        where = f"{self.name}({short_name(x)})"
        if not _is_int(axis):
            raise ArgumentTypeError(f"{where}: axis must be an int, got {axis!r}")
        return Node(self, [x], {"axis": int(axis),
                                "exclusive": check_flag(f"{where}: exclusive", exclusive),
                                "reverse": check_flag(f"{where}: reverse", reverse)})

    def describe(self, node):
        options = "".join(f", {name}" for name in ("exclusive", "reverse")
                          if node.attrs[name])
        return f"{self.name}({short_name(node.inputs[0])}, axis={node.attrs['axis']}" \
               f"{options})"

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
        return KernelSpec(f"cumulative_{'sum' if self.operation == 'sum' else 'product'}",
                          (shape, _axis(node, shape), node.attrs["exclusive"],
                           node.attrs["reverse"]))

    def reference(self, node, x):
        return cumulative_reference(x, _axis(node, x.shape), node.attrs["exclusive"],
                                    node.attrs["reverse"], self.operation)


class CumProdOp(CumSumOp):
    """``cumprod_op(x, axis, exclusive, reverse)``: as ``cumsum_op`` with products (an
    exclusive product starts at 1)."""

    name = "CumProd"
    operation = "prod"

    def gradient(self, node, output_grad):
        # dx_i = (product of the x before i) * R_i, R the adjoint's recurrence.
        x = node.inputs[0]
        axis, exclusive, reverse = (node.attrs[k] for k in ("axis", "exclusive", "reverse"))
        before = cumprod_op(x, axis, True, reverse)
        return [before * cumprod_adjoint_op(x, output_grad, axis, exclusive, reverse)]


class CumProdAdjointOp(Op):
    """The recurrence of a cumulative product's gradient (``cumulative_product_adjoint``):
    ``R[k] = g[k] + x[k+1] * R[k+1]`` in step order (``g[k+1] + ...`` from 0 where
    exclusive). Its own gradient is not defined in dlsys."""

    name = "CumProdAdjoint"

    def __call__(self, x: Node, grad: Node, axis: int, exclusive: bool,
                 reverse: bool) -> Node:
        return Node(self, [x, grad], {"axis": int(axis), "exclusive": bool(exclusive),
                                      "reverse": bool(reverse)})

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        if tuple(input_shapes[1]) != shape:
            raise ShapeError(f"{node.name}: the gradient must have x's shape {shape}, got "
                             f"{tuple(input_shapes[1])}")
        _axis(node, shape)
        return shape

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: a cumulative product has no second derivative "
                            f"in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        return KernelSpec("cumulative_product_adjoint", (shape, _axis(node, shape),
                                                         node.attrs["exclusive"],
                                                         node.attrs["reverse"]))

    def reference(self, node, x, g):
        axis = _axis(node, x.shape)
        steps = np.flip if node.attrs["reverse"] else (lambda a, axis: a)
        xs, gs = np.moveaxis(steps(x, axis), axis, 0), np.moveaxis(steps(g, axis), axis, 0)
        out = np.zeros_like(gs)
        out[-1] = 0 if node.attrs["exclusive"] else gs[-1]
        for k in range(len(gs) - 2, -1, -1):
            out[k] = (gs[k + 1] if node.attrs["exclusive"] else gs[k]) + xs[k + 1] * out[k + 1]
        return steps(np.moveaxis(out, 0, axis), axis)


cumsum_op = CumSumOp()
cumprod_op = CumProdOp()
cumprod_adjoint_op = CumProdAdjointOp()

__all__ = ["CumSumOp", "CumProdOp", "CumProdAdjointOp", "cumsum_op", "cumprod_op",
           "cumprod_adjoint_op", "cumulative_reference", "cumulative_sum_reference"]
