"""The loss family's compute: row-wise softmax, the mean softmax cross-entropy and its
adjoint (alone or fused), and one-hot rows from class indices.

Row reductions (max, sum of ``exp``) are taken stably; the mean over the rows adds in
``ACCUMULATOR`` and rounds once. The schedules (``dlsys.kernels.loss.schedule``) find the
blocks by these names: ``row_max``, ``row_sum``, ``row_loss``, ``softmax``, ``sce_grad``.
"""

from __future__ import annotations

from tvm import te, tirx

from dlsys.kernels.common.compute import ACCUMULATOR, Shape, accumulate


def _row_log_sum_exp(y: te.Tensor, rows: int, cols: int):
    """Row max and row sum of ``exp(y - max)``: the stable pieces of softmax and log-sum-exp."""
    j = te.reduce_axis((0, cols), name="j")
    row_max = te.compute((rows,), lambda i: te.max(y[i, j], axis=j), name="row_max")
    j2 = te.reduce_axis((0, cols), name="j2")
    row_sum = te.compute((rows,), lambda i: te.sum(te.exp(y[i, j2] - row_max[i]), axis=j2),
                         name="row_sum")
    return row_max, row_sum


def softmax(shape: Shape, dtype: str):
    rows, cols = shape
    a = te.placeholder(shape, dtype=dtype, name="A")
    row_max, row_sum = _row_log_sum_exp(a, rows, cols)
    c = te.compute(shape, lambda i, j: te.exp(a[i, j] - row_max[i]) / row_sum[i], name="softmax")
    return [a], [c]


def softmax_cross_entropy(shape: Shape, dtype: str):
    """Mean over rows of ``-sum(Y_ * log_softmax(Y))``, with ``log_softmax = Y - max - log(sum)``.

    The log is taken of a sum that is at least 1 (its largest term is ``exp(0)``), so it is
    never ``log(0)``, whatever the logits.
    """
    y = te.placeholder(shape, dtype=dtype, name="Y")
    labels = te.placeholder(shape, dtype=dtype, name="Y_")
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, labels], [_mean_loss(y, labels, row_max, row_sum, dtype)]


def _mean_loss(y: te.Tensor, labels: te.Tensor, row_max: te.Tensor, row_sum: te.Tensor,
               dtype: str) -> te.Tensor:
    rows, cols = (int(d) for d in y.shape)
    j = te.reduce_axis((0, cols), name="jl")
    zero = tirx.const(0, dtype)
    # A class labelled 0 adds nothing (0 log 0 = 0), also where its logit is -inf (a masked
    # class, as in attention): its log-softmax is -inf, and 0 * -inf would make the loss NaN.
    # A NaN label (a bad class index, ``one_hot``) still makes it NaN.
    row_loss = te.compute(
        (rows,),
        lambda i: te.sum(tirx.Select(labels[i, j] == zero, zero, -labels[i, j] * (
            y[i, j] - row_max[i] - te.log(row_sum[i]))), axis=j),
        name="row_loss")
    r = te.reduce_axis((0, rows), name="r")
    # The rows' losses add up in ACCUMULATOR and are scaled and rounded once: a float32 total
    # of a large batch drifts (6e-6 relative at 2**20 rows, where float64 gives 1e-8).
    total = te.compute((1,), lambda _: te.sum(accumulate(row_loss[r]), axis=r),
                       name="loss_total")
    inv_rows = tirx.const(1.0 / rows, ACCUMULATOR)
    return te.compute((1,), lambda i: (total[i] * inv_rows).astype(dtype), name="mean_loss")


def _loss_gradient(y: te.Tensor, labels: te.Tensor, upstream: te.Tensor, row_max: te.Tensor,
                   row_sum: te.Tensor, dtype: str) -> te.Tensor:
    scale = upstream[0] / tirx.const(int(y.shape[0]), dtype)
    return te.compute(y.shape, lambda i, k: (te.exp(y[i, k] - row_max[i]) / row_sum[i]
                                             - labels[i, k]) * scale, name="sce_grad")


def softmax_cross_entropy_gradient(shape: Shape, dtype: str):
    """``(softmax(Y) - Y_) / rows * G``: the exact adjoint of the mean loss, ``G`` of shape (1,)."""
    y = te.placeholder(shape, dtype=dtype, name="Y")
    labels = te.placeholder(shape, dtype=dtype, name="Y_")
    upstream = te.placeholder((1,), dtype=dtype, name="G")
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, labels, upstream], [_loss_gradient(y, labels, upstream, row_max, row_sum, dtype)]


def softmax_cross_entropy_with_gradient(shape: Shape, dtype: str):
    """The mean loss and its adjoint in one kernel: outputs ``(gradient, loss)``.

    Both read the same row max and row sum, so fusing them computes each once.
    """
    y = te.placeholder(shape, dtype=dtype, name="Y")
    labels = te.placeholder(shape, dtype=dtype, name="Y_")
    upstream = te.placeholder((1,), dtype=dtype, name="G")
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, labels, upstream], [_loss_gradient(y, labels, upstream, row_max, row_sum, dtype),
                                   _mean_loss(y, labels, row_max, row_sum, dtype)]


def one_hot(shape: Shape, dtype: str):
    """Rows of ``shape`` (batch, classes) from class indices ``L`` (batch,): 1 at the index.

    A label that is not a whole number in ``[0, classes)`` makes its row NaN, so a bad label
    shows in the loss instead of training on a row of zeros.
    """
    rows, classes = shape
    labels = te.placeholder((rows,), dtype=dtype, name="L")
    one, zero = tirx.const(1, dtype), tirx.const(0, dtype)
    nan = tirx.const(float("nan"), dtype)

    def body(i, j):
        label = labels[i]
        valid = tirx.all(label >= zero, label < tirx.const(classes, dtype),
                         label == te.floor(label))
        return tirx.Select(valid, tirx.Select(label == j.astype(dtype), one, zero), nan)

    return [labels], [te.compute(shape, body, name="one_hot")]
