"""PyTorch's cross-entropy: mean over the rows that are not ignored of
``-sum_j w[i, j] * log_softmax(Y)[i, j]``, where ``w`` is the target row (one-hot for a
class index, smoothed by ``label_smoothing``), and its adjoint.

A target is one of three kinds, told apart by its shape and type: integer class indices
``(N,)`` (as fed: int32 or int64), class indices fed as floats ``(N,)`` (whole numbers, or
the row is NaN so the loss shows it), or probability rows ``(N, C)``. Rows whose index is
``ignore_index`` add nothing and are not counted. The count of rows that are (``count``,
shape (1,)) is its own small kernel, read by the loss and by its gradient, so that neither
kernel needs a reduction over every row before its row loop.

Blocks keep the names of ``compute``'s softmax cross-entropy (``row_max``, ``row_sum``,
``row_loss``, ``loss_total``, ``mean_loss``, ``sce_grad``), so the same schedules run them.
"""

from __future__ import annotations

from tvm import te, tirx

from dlsys.kernels.common.compute import ACCUMULATOR, Shape, accumulate
from dlsys.kernels.loss.compute import _row_log_sum_exp


class _Target:
    """Whether row ``i`` counts (``valid``) and its weight for class ``j`` (``weight``)."""

    def __init__(self, target: te.Tensor, classes: int, ignore_index: int, smoothing: float,
                 dtype: str):
        self.target, self.classes, self.dtype = target, classes, dtype
        self.ignore = ignore_index
        self.smoothing = smoothing
        self.rows_given = len(target.shape) == 2
        self.integer = str(target.dtype).startswith("int")

    def valid(self, i) -> tirx.PrimExpr:
        if self.rows_given:
            return tirx.const(True, "bool")
        return self.target[i] != tirx.const(self.ignore, str(self.target.dtype))

    def weight(self, i, j) -> tirx.PrimExpr:
        off = tirx.const(self.smoothing / self.classes, self.dtype)
        if self.rows_given:
            row = self.target[i, j]
            if self.smoothing == 0:
                return row
            return row * tirx.const(1 - self.smoothing, self.dtype) + off
        on = tirx.const(1 - self.smoothing + self.smoothing / self.classes, self.dtype)
        index = self.target[i]
        hit = tirx.Select(index == j.astype(index.dtype), on, off)
        if self.integer:  # checked against [0, classes) where it was fed
            return hit
        whole = tirx.all(index >= tirx.const(0, index.dtype),
                         index < tirx.const(self.classes, index.dtype), index == te.floor(index))
        return tirx.Select(whole, hit, tirx.const(float("nan"), self.dtype))


def _placeholders(shape: Shape, target_shape: Shape, target_dtype: str, dtype: str):
    y = te.placeholder(shape, dtype=dtype, name="Y")
    target = te.placeholder(target_shape, dtype=target_dtype, name="T")
    count = te.placeholder((1,), dtype=dtype, name="count")
    return y, target, count


def _mean_loss(y, target: _Target, count, row_max, row_sum, dtype: str) -> te.Tensor:
    rows, cols = (int(d) for d in y.shape)
    zero = tirx.const(0, dtype)
    j = te.reduce_axis((0, cols), name="jl")

    def term(i, j):
        w = target.weight(i, j)
        # A class weighted 0 adds nothing, also where its logit is -inf (a masked class).
        # Tested as ``w == 0``, false for a NaN weight (a bad float index), which must reach
        # the loss; ``w != 0`` compiles to an ordered compare, false for NaN too.
        kept = tirx.Select(w == zero, zero, -w * (y[i, j] - row_max[i] - te.log(row_sum[i])))
        return tirx.Select(target.valid(i), kept, zero)

    row_loss = te.compute((rows,), lambda i: te.sum(term(i, j), axis=j), name="row_loss")
    r = te.reduce_axis((0, rows), name="r")
    total = te.compute((1,), lambda _: te.sum(accumulate(row_loss[r]), axis=r),
                       name="loss_total")
    return te.compute((1,), lambda i: (total[i] / count[0].astype(ACCUMULATOR)).astype(dtype),
                      name="mean_loss")


def _gradient(y, target: _Target, count, upstream, row_max, row_sum, dtype: str) -> te.Tensor:
    scale = upstream[0] / count[0]
    zero = tirx.const(0, dtype)
    return te.compute(y.shape, lambda i, k: tirx.Select(
        target.valid(i),
        (te.exp(y[i, k] - row_max[i]) / row_sum[i] - target.weight(i, k)) * scale, zero),
        name="sce_grad")


def cross_entropy(shape: Shape, target_shape: Shape, target_dtype: str, ignore_index: int,
                  smoothing: float, dtype: str):
    """The mean loss, shape (1,), from logits ``Y``, target ``T`` and the row ``count``."""
    y, target, count = _placeholders(shape, target_shape, target_dtype, dtype)
    rows = _Target(target, shape[1], ignore_index, smoothing, dtype)
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, target, count], [_mean_loss(y, rows, count, row_max, row_sum, dtype)]


def cross_entropy_gradient(shape: Shape, target_shape: Shape, target_dtype: str,
                           ignore_index: int, smoothing: float, dtype: str):
    """``(softmax(Y) - w) * G / count`` on the counted rows, 0 on the ignored ones."""
    y, target, count = _placeholders(shape, target_shape, target_dtype, dtype)
    upstream = te.placeholder((1,), dtype=dtype, name="G")
    rows = _Target(target, shape[1], ignore_index, smoothing, dtype)
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, target, count, upstream], [_gradient(y, rows, count, upstream, row_max,
                                                    row_sum, dtype)]


def cross_entropy_with_gradient(shape: Shape, target_shape: Shape, target_dtype: str,
                                ignore_index: int, smoothing: float, dtype: str):
    """The gradient and the loss in one kernel (both read each row's max and sum)."""
    y, target, count = _placeholders(shape, target_shape, target_dtype, dtype)
    upstream = te.placeholder((1,), dtype=dtype, name="G")
    rows = _Target(target, shape[1], ignore_index, smoothing, dtype)
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, target, count, upstream], [
        _gradient(y, rows, count, upstream, row_max, row_sum, dtype),
        _mean_loss(y, rows, count, row_max, row_sum, dtype)]


def target_count(target_shape: Shape, target_dtype: str, ignore_index: int, dtype: str):
    """How many rows of the target count: those whose index is not ``ignore_index`` (every
    row of probability rows)."""
    target = te.placeholder(target_shape, dtype=target_dtype, name="T")
    if len(target_shape) == 2:
        return [target], [te.compute((1,), lambda _: tirx.const(target_shape[0], dtype),
                                     name="count")]
    r = te.reduce_axis((0, target_shape[0]), name="r")
    ignore = tirx.const(ignore_index, target_dtype)
    one, zero = tirx.const(1, dtype), tirx.const(0, dtype)
    return [target], [te.compute((1,), lambda _: te.sum(
        tirx.Select(target[r] != ignore, one, zero), axis=r), name="count")]
