"""PyTorch's cross-entropy (``F.cross_entropy``): class indices, possibly ignored, or
probability rows, with label smoothing; the mean over the rows that count, and its exact
gradient.

The target is an optional index input (``Op.optional_index_inputs``): fed integers, it is
class indices kept in their type and checked where fed; fed floats, class indices as
numbers (``(N,)``) or probability rows (``(N, C)``), told apart by shape.
"""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_constant
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import IndexBounds, Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text


def _check_target(node: Node, logits, target) -> None:
    logits, target = tuple(logits), tuple(target)
    if len(logits) != 2:
        raise ShapeError(f"{node.name}: logits must be (batch, classes), got {logits}")
    if target not in (logits[:1], logits):
        raise ShapeError(f"{node.name}: the target must be class indices of shape "
                         f"{logits[:1]} or probability rows of the logits' shape {logits}, "
                         f"got {target}")


def _settings(node: Node) -> tuple[int, float]:
    return node.attrs["ignore_index"], node.attrs["label_smoothing"]


def _row_weights(node: Node, logits: np.ndarray, target: np.ndarray):
    """The numpy reference's (counted rows, target weights)."""
    ignore, smoothing = _settings(node)
    classes = logits.shape[1]
    if target.shape == logits.shape:
        return np.ones(len(logits), bool), target * (1 - smoothing) + smoothing / classes
    valid = target != ignore
    weights = np.full(logits.shape, smoothing / classes)
    whole = (target >= 0) & (target < classes) & (target == np.floor(target))
    weights[~whole & valid] = np.nan
    rows = np.flatnonzero(whole & valid)
    weights[rows, target[rows].astype(int)] += 1 - smoothing
    return valid, weights


def _log_softmax(y: np.ndarray) -> np.ndarray:
    shifted = y - y.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class TargetCountOp(Op):
    """How many rows of a target count, shape (1,): the class indices that are not
    ``ignore_index`` (every row of probability rows). The loss and its gradient divide by it."""

    name = "TargetCount"
    optional_index_inputs = (0,)

    def __call__(self, target: Node, ignore_index: int) -> Node:
        return Node(self, [target], {"ignore_index": ignore_index})

    def infer_shape(self, node, input_shapes):
        if len(input_shapes[0]) not in (1, 2):
            raise ShapeError(f"{node.name}: the target must be class indices (N,) or rows "
                             f"(N, C), got {tuple(input_shapes[0])}")
        return (1,)

    def gradient(self, node, output_grad):
        return [None]

    def index_kernel_spec(self, node, input_shapes, output_shape, index_dtypes):
        return KernelSpec("target_count", (tuple(input_shapes[0]), index_dtypes[0],
                                           node.attrs["ignore_index"]))

    def reference(self, node, target):
        if target.ndim == 2:
            return np.array([len(target)], dtype=float)
        return np.array([np.sum(target != node.attrs["ignore_index"])], dtype=float)


class CrossEntropyOp(Op):
    """Mean over the counted rows of ``-sum_j w[i, j] log_softmax(logits)[i, j]``, shape
    (1,): ``w`` one-hot at the class index (smoothed: ``1 - s + s/C`` there, ``s/C``
    elsewhere), or the probability row. Ids are checked to lie in ``[0, C)`` or be
    ``ignore_index``; an ignored row adds nothing; every row ignored gives NaN (0 / 0), as
    in PyTorch."""

    name = "CrossEntropy"
    optional_index_inputs = (1,)

    def __call__(self, logits: Node, target: Node, count: Node, ignore_index: int = -100,
                 label_smoothing: float = 0.0) -> Node:
        return Node(self, [logits, target, count], {"ignore_index": ignore_index,
                                                    "label_smoothing": label_smoothing})

    def describe(self, node):
        logits, target, _ = node.inputs
        return f"CrossEntropy({short_name(logits)}, {short_name(target)})"

    def infer_shape(self, node, input_shapes):
        try:
            _check_target(node, input_shapes[0], input_shapes[1])
        except ShapeError as err:
            raise ShapeError(f"{err} ({inputs_text(node, input_shapes)})") from None
        return (1,)

    def index_bounds(self, node, shapes):
        classes = shapes[node.inputs[0]][1]
        return {1: IndexBounds(classes, (node.attrs["ignore_index"],))}

    def gradient(self, node, output_grad):
        return [cross_entropy_gradient_op(node, output_grad), None, None]

    def _params(self, shapes, index_dtypes, node) -> tuple:
        return (tuple(shapes[0]), tuple(shapes[1]), index_dtypes[0], *_settings(node))

    def index_kernel_spec(self, node, input_shapes, output_shape, index_dtypes):
        return KernelSpec("cross_entropy", self._params(input_shapes, index_dtypes, node))

    def reference(self, node, logits, target, count):
        valid, weights = _row_weights(node, logits, target)
        with np.errstate(invalid="ignore"):  # 0 * -inf, replaced by 0
            terms = np.where(weights == 0, 0.0, -weights * _log_softmax(logits))
        return np.array([terms[valid].sum() / count[0]])


class CrossEntropyGradientOp(Op):
    """The loss's adjoint: ``(softmax(logits) - w) * g / count`` on counted rows, 0 on the
    ignored ones. Its kernel can write the loss too (``absorbs``): both need each row's
    max and sum of exponentials."""

    name = "CrossEntropyGrad"
    optional_index_inputs = (1,)
    absorbs = None  # set below

    def __call__(self, loss: Node, output_grad: Node) -> Node:
        logits, target, count = loss.inputs
        return Node(self, [logits, target, count, output_grad], dict(loss.attrs))

    def infer_shape(self, node, input_shapes):
        _check_target(node, input_shapes[0], input_shapes[1])
        if tuple(input_shapes[3]) != (1,):
            raise ShapeError(f"{node.name}: the upstream gradient must have shape (1,), got "
                             f"{tuple(input_shapes[3])}")
        return tuple(input_shapes[0])

    def index_bounds(self, node, shapes):
        return CrossEntropyOp.index_bounds(self, node, shapes)

    def index_kernel_spec(self, node, input_shapes, output_shape, index_dtypes):
        return KernelSpec("cross_entropy_gradient",
                          CrossEntropyOp._params(self, input_shapes, index_dtypes, node))

    def absorb_kernel_spec(self, node, other, shapes, spec):
        if other.inputs != node.inputs[:3] or other.attrs != node.attrs:
            return None
        return KernelSpec("cross_entropy_with_gradient", spec.params)

    def reference(self, node, logits, target, count, g):
        valid, weights = _row_weights(node, logits, target)
        grad = (np.exp(_log_softmax(logits)) - weights) * g[0] / count[0]
        grad[~valid] = 0
        return grad


target_count_op = TargetCountOp()
cross_entropy_op = CrossEntropyOp()
cross_entropy_gradient_op = CrossEntropyGradientOp()
cross_entropy_gradient_op.absorbs = cross_entropy_op


def cross_entropy(logits: Node, target: Node, ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> Node:
    """PyTorch's ``F.cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0)``
    for (N, C) logits: the mean loss over the rows whose class index is not
    ``ignore_index``, shape (1,)."""
    check_node("cross_entropy", "logits", logits)
    check_node("cross_entropy", "target", target)
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise ArgumentTypeError(f"cross_entropy: ignore_index must be an int, got "
                                f"{ignore_index!r}")
    smoothing = check_constant("cross_entropy: label_smoothing", label_smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise ArgumentError(f"cross_entropy: label_smoothing must be in [0, 1], got "
                                f"{label_smoothing!r}")
    count = target_count_op(target, int(ignore_index))
    return cross_entropy_op(logits, target, count, int(ignore_index), smoothing)
