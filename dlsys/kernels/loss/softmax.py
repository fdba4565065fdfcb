"""Compute definitions of softmax and log-softmax along one axis of a tensor of any rank, and
of their adjoints, row-wise kernels (``dlsys.kernels.norm.rows``) that run with the
``rows`` schedule.

Softmax is taken stably: each row's max is subtracted before ``exp``, so logits of 1e4
neither overflow nor lose the row, and an entry of ``-inf`` (a masked position) gives an
exact 0 (log-softmax: ``-inf``) while its row has a finite entry. A row of ``-inf`` only is
NaN, as in PyTorch: its max is ``-inf``, and ``-inf - -inf`` is NaN. ``exp`` is
``fastmath.exp``, vectorised in float32.
"""

from __future__ import annotations

from tvm import te

from dlsys.kernels.common.compute import Shape
from dlsys.kernels.elementwise.fastmath import exp
from dlsys.kernels.norm.rows import reduce_along


def _row_max_and_sum(x: te.Tensor, shape: Shape, axis: int, dtype: str):
    """The max along ``axis`` and the sum of ``exp(x - max)``, shaped ``shape`` without it."""
    axis = axis % len(shape)

    def row(index):
        return index[:axis] + index[axis + 1:]

    row_max = reduce_along(lambda *i: x[i], shape, axis, te.max, "row_max", dtype)
    row_sum = reduce_along(lambda *i: exp(x[i] - row_max[row(i)]), shape, axis, te.sum,
                           "row_sum", dtype)
    return row_max, row_sum, row


def softmax_along(shape: Shape, axis: int, log: bool, dtype: str):
    """``exp(X - max) / sum(exp(X - max))`` along ``axis`` (``log``: its logarithm,
    ``X - max - log(sum)``); input X."""
    x = te.placeholder(shape, dtype=dtype, name="X")
    row_max, row_sum, row = _row_max_and_sum(x, shape, axis, dtype)
    if log:
        out = te.compute(shape, lambda *i: x[i] - row_max[row(i)] - te.log(row_sum[row(i)]),
                         name="log_softmax")
    else:
        out = te.compute(shape, lambda *i: exp(x[i] - row_max[row(i)]) / row_sum[row(i)],
                         name="softmax")
    return [x], [out]


def softmax_along_gradient(shape: Shape, axis: int, log: bool, dtype: str):
    """The adjoint of ``softmax_along`` at its output ``Y`` for the upstream gradient ``G``:
    ``Y * (G - sum(G * Y))`` (``log``: ``G - exp(Y) * sum(G)``), sums along ``axis``;
    inputs G and Y."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    y = te.placeholder(shape, dtype=dtype, name="Y")
    axis = axis % len(shape)

    def row(index):
        return index[:axis] + index[axis + 1:]

    if log:
        total = reduce_along(lambda *i: g[i], shape, axis, te.sum, "row_sum", dtype)
        out = te.compute(shape, lambda *i: g[i] - exp(y[i]) * total[row(i)],
                         name="log_softmax_grad")
    else:
        total = reduce_along(lambda *i: g[i] * y[i], shape, axis, te.sum, "row_sum", dtype)
        out = te.compute(shape, lambda *i: y[i] * (g[i] - total[row(i)]), name="softmax_grad")
    return [g, y], [out]
