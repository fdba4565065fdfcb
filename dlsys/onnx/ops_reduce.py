"""ONNX's reductions, softmax and normalisations as dlsys graph nodes (see ``ops``)."""

from __future__ import annotations

from dlsys.graph import Node
from dlsys.onnx.bounds import AXIS
from dlsys.onnx.ops import Context, converter, show_dims
from dlsys.ops import (
    exp_op,
    log_op,
    softmax_op,
    sum_op,
)
from dlsys.ops.layout import transpose_op
from dlsys.ops.reshape import reshape_op, reshape_to_op


@converter("Softmax", "LogSoftmax", attrs=("axis",), ranked={"axis": AXIS})
def softmax(ctx, x):
    x = ctx.node_input(0, x)
    dims = ctx.input_dims(0, x)
    if dims is None:
        raise ctx.refuse("the input's rank is unknown to ONNX's shape inference")
    axis = int(ctx.attr("axis", -1)) % len(dims)  # in [-rank, rank): checked at import
    if ctx.training:
        return _differentiable_log_softmax(ctx, x, axis)
    if len(dims) == 2 and axis == 1:
        y = softmax_op(x)
    else:
        # dlsys's softmax runs over the rows of a matrix: the axis moves last, the rest
        # folds into rows, and both are undone after.
        fixed = ctx.fixed_shapes().get(ctx.node.input[0])
        size = dims[axis] if dims[axis] is not None else fixed and fixed[axis]
        if size is None:
            raise ctx.refuse(f"the softmax axis {axis} of shape {show_dims(dims)} has a size "
                             f"unknown until run time")
        perm = [d for d in range(len(dims)) if d != axis] + [axis]
        moved = x if axis == len(dims) - 1 else transpose_op(x, tuple(perm))
        y = reshape_to_op(softmax_op(reshape_op(moved, (-1, size))), moved)
        if moved is not x:
            inverse = [perm.index(d) for d in range(len(dims))]
            y = transpose_op(y, tuple(inverse))
    if ctx.node.op_type == "Softmax":
        return y
    # log(softmax): softmax is computed stably (max subtracted), so this is exact to float32
    # rounding until a probability falls below float32's normal range, a logit more than
    # about 87 below its row's largest.
    return log_op(y)


def _differentiable_log_softmax(ctx: Context, x: Node, axis: int) -> Node:
    """Softmax or log-softmax from operators that have gradients (dlsys's softmax kernel has
    none), for fine-tuning: ``x - log(sum(exp(x)))``. Without a row maximum to subtract,
    ``exp`` overflows float32 for logits above about 88; a loss that becomes infinite shows
    it. ``F.cross_entropy`` of log-softmax outputs equals that of the logits, so a model
    ending in LogSoftmax fine-tunes with it unchanged."""
    log_probs = x - log_op(sum_op(exp_op(x), axis, keepdims=True))
    return log_probs if ctx.node.op_type == "LogSoftmax" else exp_op(log_probs)
