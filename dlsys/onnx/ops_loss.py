"""ONNX's losses (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss) as dlsys graph nodes
(see ``ops``).

Both take scores ``x`` of shape (N, C) or (N, C, d1, ...), integer targets of shape
(N, d1, ...), an optional weight per class, an ``ignore_index`` and a reduction (none, sum
or mean). They are composed from existing operators, so an imported loss has its gradient
for fine-tuning: each target is compared with the class numbers (a 0/1 mask over the class
axis, times the target's class weight), and the loss of a position is minus the sum, over
the class axis, of the mask times the log-probabilities. The mean divides by the sum of
the targets' weights, which ONNX defines for an ignored target as 0. Work grows with N * C
(a mask, not a gather), which a loss's share of a step does not notice. A target outside
[0, C) that is not ``ignore_index`` matches no class and so counts as ignored (onnxruntime
refuses it at run time; dlsys reads fed targets only as numbers here).
"""

from __future__ import annotations

import numpy as np

from dlsys.errors import DlsysError
from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter, reshape_target, show_dims
from dlsys.ops import sum_op
from dlsys.ops.activations import equal_op
from dlsys.ops.cast import as_float_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reshape import reshape_op
from dlsys.ops.softmax import logsoftmax_op

REDUCTIONS = ("none", "sum", "mean")
# A class number that no integer target equals: the ignored class's place in the classes
# compared against, so that an ignored target matches no class and weighs 0.
NO_CLASS = -0.5


def _reduction(ctx: Context) -> str:
    return ctx.choice("reduction", "mean", REDUCTIONS)


def _followed_dims(ctx: Context, value) -> tuple[int, ...] | None:
    """``value``'s shape by dlsys's own shape rules, from the graph inputs' dimensions
    (where ONNX's inference lost it: a Reshape to a Shape computed in the graph, as ONNX's
    own expansion of SoftmaxCrossEntropyLoss has); None where an input's size is unknown."""
    shapes: dict[Node, tuple[int, ...]] = {}
    stack = [(value, False)]
    while stack:
        node, inputs_done = stack.pop()
        if node in shapes:
            continue
        if node.op.holds_value:
            shapes[node] = tuple(node.shape)
        elif node.op.is_placeholder:
            dims = ctx.shapes.get(node.name)
            if dims is None or None in dims:
                return None
            shapes[node] = tuple(dims)
        elif not inputs_done:
            stack.append((node, True))
            stack.extend((i, False) for i in node.inputs if i not in shapes)
        else:
            try:
                shapes[node] = tuple(node.op.infer_shape(node, [shapes[i]
                                                                for i in node.inputs]))
            except DlsysError:
                return None
    return shapes[value]


def _classes(ctx: Context, x) -> tuple[int, int]:
    """The scores' class count and rank, checked: (N, C, d1, ...) with C known."""
    dims = ctx.input_dims(0, x)
    if dims is None and isinstance(x, Node):
        dims = _followed_dims(ctx, x)
    if dims is None or len(dims) < 2:
        raise ctx.refuse(f"the scores must be (N, C) or (N, C, d1, ...), got shape "
                         f"{show_dims(dims)}")
    if dims[1] is None:
        raise ctx.refuse(f"the class axis of the scores {show_dims(dims)} is unknown until "
                         f"run time")
    return dims[1], len(dims)


def _class_numbers(classes: int, ignore_index: int | None) -> np.ndarray:
    numbers = np.arange(classes, dtype=np.float32)
    if ignore_index is not None and 0 <= ignore_index < classes:
        numbers[ignore_index] = NO_CLASS
    return numbers


def _constant(ctx: Context, array: np.ndarray, what: str) -> Node:
    """A constant as a graph value no optimiser updates."""
    return Parameter(np.asarray(array, np.float32), f"{ctx.node.output[0]}:{what}")


def _weighted_mask(ctx: Context, target, weight, classes: int, rank: int):
    """(N, C, d1, ...): at each position, the target's class weight on its class, 0 on the
    other classes and everywhere for an ignored target. A numpy array where the target and
    weight are constants, else a graph node."""
    ignore = ctx.attr("ignore_index")
    numbers = _class_numbers(classes, None if ignore is None else int(ignore))
    along_classes = (1, classes) + (1,) * (rank - 2)
    if not isinstance(target, Node) and not isinstance(weight, Node):
        target = np.asarray(target)
        if target.ndim != rank - 1:
            raise ctx.refuse(f"the target must have shape (N, d1, ...) of rank {rank - 1}, "
                             f"got {target.shape}")
        mask = (np.expand_dims(target, 1) == numbers.reshape(along_classes)).astype(np.float32)
        return mask if weight is None else mask * np.asarray(weight, np.float32).reshape(
            along_classes)
    if isinstance(target, Node):
        target_dims = ctx.input_dims(1, target)
        if target_dims is None or len(target_dims) != rank - 1:
            raise ctx.refuse(f"the target must have shape (N, d1, ...) of rank {rank - 1}, "
                             f"got {show_dims(target_dims)}")
        # Integer targets fed to the graph are read as numbers (exact below 2**24).
        column = reshape_op(as_float_op(target), reshape_target(
            ctx, (target_dims[0], 1, *target_dims[1:]), "the target's shape"))
        mask = equal_op(column, _constant(ctx, numbers.reshape(along_classes), "classes"))
    else:
        mask = _constant(ctx, np.expand_dims(np.asarray(target), 1)
                         == numbers.reshape(along_classes), "mask")
    if weight is None:
        return mask
    if not isinstance(weight, Node):
        weight = _constant(ctx, weight, "weight")
    return mask * reshape_op(weight, along_classes)


def _reduce(ctx: Context, log_prob, weighted):
    """The node's loss of log-probabilities ``log_prob`` under ``weighted`` (see
    ``_weighted_mask``): per position, summed or averaged as its reduction says."""
    reduction = _reduction(ctx)
    if isinstance(log_prob, np.ndarray) and isinstance(weighted, np.ndarray):
        losses = -(weighted * log_prob).sum(axis=1)
        if reduction == "none":
            return losses.astype(np.float32)
        total = losses.sum()
        if reduction == "mean":
            total = total / weighted.sum()
        return np.asarray(total, np.float32)
    if isinstance(weighted, np.ndarray):
        weighted = _constant(ctx, weighted, "weighted")
    if isinstance(log_prob, np.ndarray):
        log_prob = _constant(ctx, log_prob, "log_prob")
    losses = sum_op(weighted * log_prob, 1) * -1.0
    if reduction == "none":
        return losses
    total = sum_op(losses)
    # ONNX's mean weighs each position by its target's class weight (0 when ignored).
    return total / sum_op(weighted) if reduction == "mean" else total


@converter("NegativeLogLikelihoodLoss", attrs=("ignore_index", "reduction"))
def negative_log_likelihood_loss(ctx, x, target, weight=None):
    classes, rank = _classes(ctx, x)
    return _reduce(ctx, x, _weighted_mask(ctx, target, weight, classes, rank))


@converter("SoftmaxCrossEntropyLoss", attrs=("ignore_index", "reduction"))
def softmax_cross_entropy_loss(ctx, x, target, weight=None):
    """The negative log-likelihood of ``log_softmax(x)`` over the class axis; the second
    output, where the graph reads it, is that log-softmax."""
    classes, rank = _classes(ctx, x)
    if isinstance(x, np.ndarray):
        shifted = x - x.max(axis=1, keepdims=True)
        log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    else:
        log_prob = logsoftmax_op(x, 1)
    loss = _reduce(ctx, log_prob, _weighted_mask(ctx, target, weight, classes, rank))
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        return loss, log_prob
    return loss
