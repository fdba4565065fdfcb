"""The softmax cross-entropy loss, with its exact gradient, and one-hot labels.

``softmax_op`` lives in ``dlsys.ops.softmax`` (along any axis, with its gradient) and is
re-exported here for the callers that import it with the loss."""

from __future__ import annotations

import numpy as np

from dlsys.errors import ShapeError
from dlsys.graph import Node, Op
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.shapes import apply_rule, row_matrix_shape, same_shape
from dlsys.ops.softmax import softmax_op  # noqa: F401  (re-exported)


def _log_softmax(y: np.ndarray) -> np.ndarray:
    shifted = y - y.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _check_logits(node: Node, input_shapes) -> None:
    apply_rule(node, input_shapes, row_matrix_shape, input_shapes[0])


class SoftmaxCrossEntropyOp(Op):
    """Mean over the batch of ``-sum(labels * log_softmax(logits))``; output shape ``(1,)``.

    Labels are treated as constants (no gradient flows into them), as in the course assignment.
    A term whose label is 0 is 0, also where the logit is ``-inf`` (a masked class), as
    ``0 log 0 = 0``: the loss stays finite while the labelled logits are.
    """

    name = "SoftmaxXEntropy"

    def __call__(self, logits: Node, labels: Node) -> Node:
        return Node(self, [logits, labels])

    def infer_shape(self, node, input_shapes):
        _check_logits(node, input_shapes)
        same_shape(node, input_shapes)
        return (1,)

    def gradient(self, node, output_grad):
        logits, labels = node.inputs
        return [softmaxcrossentropy_gradient_op(logits, labels, output_grad), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("softmax_cross_entropy", (tuple(input_shapes[0]),))

    def reference(self, node, y, labels):
        with np.errstate(invalid="ignore"):  # 0 * -inf, replaced by 0
            terms = np.where(labels == 0, 0.0, labels * _log_softmax(y))
        return np.array([np.mean(-terms.sum(axis=1))])


class SoftmaxCrossEntropyGradientOp(Op):
    """``(softmax(logits) - labels) / batch * g``: the exact adjoint of the mean loss.

    Its kernel can write the loss of the same logits and labels too: both need each row's
    max and sum of exponentials (``absorbs``).
    """

    name = "SoftmaxXEntropyGrad"
    absorbs = None  # set below, once the loss operator exists

    def __call__(self, logits: Node, labels: Node, output_grad: Node) -> Node:
        return Node(self, [logits, labels, output_grad])

    def infer_shape(self, node, input_shapes):
        _check_logits(node, input_shapes)
        same_shape(node, input_shapes[:2])
        if tuple(input_shapes[2]) != (1,):
            raise ShapeError(f"{node.name}: upstream gradient {node.inputs[2].name} must have "
                             f"shape (1,), got {tuple(input_shapes[2])}")
        return tuple(input_shapes[0])

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("softmax_cross_entropy_gradient", (tuple(output_shape),))

    def absorb_kernel_spec(self, node, other, shapes, spec):
        logits, labels, _ = node.inputs
        if other.inputs[0] is not logits or other.inputs[1] is not labels:
            return None
        return KernelSpec("softmax_cross_entropy_with_gradient", (tuple(shapes[node]),))

    def reference(self, node, y, labels, g):
        return (np.exp(_log_softmax(y)) - labels) / len(y) * g[0]


class OneHotLikeOp(Op):
    """``labels`` as rows of ``logits``' shape: class indices ``(batch,)`` become one-hot
    rows; labels already of that shape pass through (an alias, no kernel). An index that is
    not a whole number in ``[0, classes)`` gives a row of NaN, so the loss shows it."""

    name = "OneHotLike"

    def __call__(self, labels: Node, logits: Node) -> Node:
        return Node(self, [labels, logits])

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def is_alias(self, node, input_shapes):
        return tuple(input_shapes[0]) == tuple(input_shapes[1])

    def infer_shape(self, node, input_shapes):
        labels, logits = (tuple(s) for s in input_shapes)
        _check_logits(node, [logits, labels])
        if labels != logits and labels != logits[:1]:
            raise ShapeError(f"{node.name}: labels must be class indices of shape "
                             f"{logits[:1]} or rows of the logits' shape {logits}, got "
                             f"{labels}")
        return logits

    def gradient(self, node, output_grad):
        return [None, None]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("one_hot", (tuple(output_shape),))

    def reference(self, node, labels, logits):
        if labels.shape == logits.shape:
            return labels
        rows = np.zeros(logits.shape)
        valid = (labels >= 0) & (labels < logits.shape[1]) & (labels == np.floor(labels))
        rows[~valid] = np.nan
        rows[np.flatnonzero(valid), labels[valid].astype(int)] = 1.0
        return rows


softmaxcrossentropy_op = SoftmaxCrossEntropyOp()
softmaxcrossentropy_gradient_op = SoftmaxCrossEntropyGradientOp()
softmaxcrossentropy_gradient_op.absorbs = softmaxcrossentropy_op
onehot_like_op = OneHotLikeOp()
