"""Softmax and log-softmax along one axis of a tensor of any rank, their adjoints, and the
causal mask of attention scores, all with PyTorch's semantics.

Softmax is stable for logits of any size (each row's max is subtracted first) and for masked
positions: an entry of ``-inf`` gets probability 0 while its row has a finite entry; a row of
``-inf`` only is NaN, as in PyTorch. The adjoints read the forward output ``y``, not the
logits: softmax's is ``y * (g - sum(g * y))`` and log-softmax's ``g - exp(y) * sum(g)``,
each one row-wise kernel.
"""

from __future__ import annotations

import numbers

import numpy as np

from dlsys.checks import check_flag
from dlsys.errors import ArgumentTypeError, GradientError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text


def _check_axis(where: str, axis) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise ArgumentTypeError(f"{where}: axis must be an int, got {axis!r}")
    return int(axis)


def _normalized_axis(node: Node, shape) -> int:
    """The node's ``axis`` in ``[0, rank)`` for an input of ``shape``; a ``ShapeError`` naming
    the node, the shape and the axis when it is out of range."""
    axis, rank = node.attrs["axis"], len(shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"{node.name}: axis {axis} is out of range for {node.inputs[0].name} "
                         f"of shape {tuple(shape)} (rank {rank})")
    return axis % rank


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # a row of -inf only: NaN, as in PyTorch
        shifted = x - x.max(axis=axis, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


class SoftmaxOp(Op):
    """``exp(x) / sum(exp(x))`` along ``axis`` (default the last), any rank. ``causal``:
    of ``causal_mask_op(x)``, in one kernel (the last axis only)."""

    name = "Softmax"
    log = False
    # Its kernel reads a row (all of it, for its max and sum) before it writes that row.
    inplace_input = 0

    def __call__(self, x: Node, axis: int = -1, causal: bool = False) -> Node:
        x = check_node(self.name, "x", x)
        where = f"{self.name}({x.name})"
        return Node(self, [x], {"axis": _check_axis(where, axis),
                                "causal": check_flag(f"{where}: causal", causal)})

    def describe(self, node):
        axis = node.attrs["axis"]
        extra = ("" if axis == -1 else f", {axis}") + (", causal" if node.attrs["causal"] else "")
        return f"{self.name}({short_name(node.inputs[0])}{extra})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        axis = _normalized_axis(node, shape)
        if node.attrs["causal"] and (len(shape) < 2 or axis != len(shape) - 1):
            raise ShapeError(f"{node.name}: a causal softmax runs along the last axis of "
                             f"scores (..., T, S); got axis {node.attrs['axis']} of "
                             f"{node.inputs[0].name} of shape {shape}")
        return shape

    def gradient(self, node, output_grad):
        return [softmax_gradient_op(output_grad, node, node.attrs["axis"], self.log,
                                    node.attrs["causal"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(output_shape)
        return KernelSpec("softmax_along", (shape, _normalized_axis(node, shape), self.log,
                                            node.attrs["causal"]))

    def reference(self, node, x):
        if node.attrs["causal"]:
            x = _causal_reference(x, float("-inf"))
        logs = _log_softmax(x, node.attrs["axis"])
        return logs if self.log else np.exp(logs)


class LogSoftmaxOp(SoftmaxOp):
    """``x - log(sum(exp(x)))`` along ``axis``: the log of softmax, without its underflow."""

    name = "LogSoftmax"
    log = True


class SoftmaxGradientOp(Op):
    """The adjoint of softmax (``log``: of log-softmax) along ``axis`` at its output ``y``
    for the upstream gradient ``g``; ``causal``: of the causal softmax, 0 at the masked
    logits (also in a row with no key left, whose output is NaN)."""

    name = "SoftmaxGrad"
    inplace_input = 0  # g: each row's sum is taken before the row is written

    def __call__(self, g: Node, y: Node, axis: int, log: bool, causal: bool = False) -> Node:
        return Node(self, [g, y], {"axis": axis, "log": check_flag("log", log),
                                   "causal": check_flag("causal", causal)})

    def describe(self, node):
        kind = "LogSoftmaxGrad" if node.attrs["log"] else "SoftmaxGrad"
        return f"{kind}({short_name(node.inputs[0])})"

    def infer_shape(self, node, input_shapes):
        if tuple(input_shapes[0]) != tuple(input_shapes[1]):
            raise ShapeError(f"{node.name}: shapes differ ({inputs_text(node, input_shapes)})")
        shape = tuple(input_shapes[0])
        _normalized_axis(node, shape)
        return shape

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: softmax has no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(output_shape)
        return KernelSpec("softmax_along_gradient", (shape, _normalized_axis(node, shape),
                                                     node.attrs["log"], node.attrs["causal"]))

    def reference(self, node, g, y):
        axis = node.attrs["axis"]
        if node.attrs["log"]:
            grad = g - np.exp(y) * g.sum(axis=axis, keepdims=True)
        else:
            grad = y * (g - (g * y).sum(axis=axis, keepdims=True))
        return _causal_reference(grad, 0.0) if node.attrs["causal"] else grad


class CausalMaskOp(Op):
    """Scores ``x`` of shape (..., T, S) with ``x[..., i, j]`` kept where ``j <= i + S - T``
    and ``fill`` (``-inf``) elsewhere: query ``i`` of the last T positions attends to the
    keys up to its own (PyTorch's ``is_causal``, ``j <= i`` for T == S). Its adjoint is the
    same mask with ``fill`` 0."""

    name = "CausalMask"
    inplace_input = 0  # each element is read once, at its own position, before it is written

    def __call__(self, x: Node, fill: float = float("-inf")) -> Node:
        x = check_node(self.name, "x", x)
        if isinstance(fill, (bool, np.bool_)) or not isinstance(fill, numbers.Real):
            raise ArgumentTypeError(f"{self.name}({x.name}): fill must be a number, got "
                                    f"{fill!r}")
        return Node(self, [x], {"fill": float(fill)})

    def describe(self, node):
        fill = node.attrs["fill"]
        extra = "" if fill == float("-inf") else f", {fill:g}"
        return f"CausalMask({short_name(node.inputs[0])}{extra})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        if len(shape) < 2:
            raise ShapeError(f"{node.name}: the causal mask takes scores of shape (..., T, S), "
                             f"got {shape} for {node.inputs[0].name}")
        return shape

    def gradient(self, node, output_grad):
        return [causal_mask_op(output_grad, fill=0.0)]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("causal_mask", (tuple(output_shape), node.attrs["fill"]))

    def reference(self, node, x):
        return _causal_reference(x, node.attrs["fill"])


def _causal_reference(x: np.ndarray, fill: float) -> np.ndarray:
    t, s = x.shape[-2:]
    keep = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
    return np.where(keep, x, fill)


softmax_op = SoftmaxOp()
logsoftmax_op = LogSoftmaxOp()
softmax_gradient_op = SoftmaxGradientOp()
causal_mask_op = CausalMaskOp()

__all__ = ["SoftmaxOp", "LogSoftmaxOp", "SoftmaxGradientOp", "CausalMaskOp", "softmax_op",
           "logsoftmax_op", "softmax_gradient_op", "causal_mask_op"]
