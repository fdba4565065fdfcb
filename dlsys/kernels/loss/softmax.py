"""Compute definitions of softmax and log-softmax along one axis of a tensor of any rank, and
of their adjoints, row-wise kernels (``dlsys.kernels.norm.rows``) that run with the
``rows`` schedule.

Softmax is taken stably: each row's max is subtracted before ``exp``, so logits of 1e4
neither overflow nor lose the row, and an entry of ``-inf`` (a masked position) gives an
exact 0 (log-softmax: ``-inf``) while its row has a finite entry. A row of ``-inf`` only is
NaN, as in PyTorch: its exponentials are all 0, and ``0 * (1 / 0)`` (log-softmax:
``-inf - log(0)``) is NaN. ``exp`` is ``fastmath.exp``, vectorised in float32.
"""

from __future__ import annotations

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape
from dlsys.kernels.elementwise.fastmath import exp
from dlsys.kernels.norm.rows import ROW_SUFFIX, reduce_along


def _row(index: tuple, axis: int) -> tuple:
    """The index of a row statistic: ``index`` without ``axis``."""
    return index[:axis] + index[axis + 1:]


def softmax_along(shape: Shape, axis: int, log: bool, causal: bool, dtype: str):
    """``exp(X - max) / sum(exp(X - max))`` along ``axis`` (``log``: its logarithm,
    ``X - max - log(sum)``); input X. ``causal``: of X causally masked first (the last axis;
    see ``elementwise.compute.causal_mask``), in the same pass. Softmax keeps each row's
    exponentials (``exp_row``), so that ``exp`` runs once an element, and multiplies them
    by the reciprocal of their sum."""
    placeholder = te.placeholder(shape, dtype=dtype, name="X")
    axis = axis % len(shape)
    x = _causally_masked(placeholder, shape) if causal else placeholder
    row_max = reduce_along(lambda *i: x[i], shape, axis, te.max, "row_max", dtype)
    shifted = te.compute(shape, lambda *i: x[i] - row_max[_row(i, axis)], name="shifted")
    if log:
        row_sum = reduce_along(lambda *i: exp(shifted[i]), shape, axis, te.sum, "row_sum",
                               dtype)
        out = te.compute(shape, lambda *i: shifted[i] - te.log(row_sum[_row(i, axis)]),
                         name="log_softmax")
        return [placeholder], [out]
    if shape[axis] == 1:
        # A row of one element: exp(x - x) divided by itself, 1, or NaN for an infinite x as
        # in PyTorch (multiplied by the reciprocal of its one-term sum it came out 1).
        return [placeholder], [te.compute(shape, lambda *i: exp(shifted[i]) / exp(shifted[i]),
                                          name="softmax")]
    exps = te.compute(shape, lambda *i: exp(shifted[i]), name="exp" + ROW_SUFFIX)
    row_sum = reduce_along(lambda *i: exps[i], shape, axis, te.sum, "row_sum", dtype)
    one = tirx.const(1, dtype)
    inverse = te.compute(row_sum.shape, lambda *r: one / row_sum[r], name="inverse_sum")
    out = te.compute(shape, lambda *i: exps[i] * inverse[_row(i, axis)], name="softmax")
    return [placeholder], [out]


def _causally_masked(x: te.Tensor, shape: Shape, fill=None, name: str = "masked"
                     ) -> te.Tensor:
    """``X`` with ``fill`` (-inf) where key ``j`` is after query ``i``."""
    offset = shape[-1] - shape[-2]
    fill = tirx.const(float("-inf"), x.dtype) if fill is None else fill
    return te.compute(shape, lambda *i: tirx.Select(i[-1] <= i[-2] + offset, x[i], fill),
                      name=name)


def softmax_along_gradient(shape: Shape, axis: int, log: bool, causal: bool, dtype: str):
    """The adjoint of ``softmax_along`` at its output ``Y`` for the upstream gradient ``G``:
    ``Y * (G - sum(G * Y))`` (``log``: ``G - exp(Y) * sum(G)``), sums along ``axis``;
    ``causal``: 0 at the masked positions (log-softmax's output there, -inf minus the log
    of the sum, still reads the unmasked logits: their G stays in the sum); inputs G and Y."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    y = te.placeholder(shape, dtype=dtype, name="Y")
    axis = axis % len(shape)

    def row(index):
        return _row(index, axis)

    if log:
        total = reduce_along(lambda *i: g[i], shape, axis, te.sum, "row_sum", dtype)
        grad = te.compute(shape, lambda *i: g[i] - exp(y[i]) * total[row(i)],
                          name="log_softmax_grad")
    else:
        total = reduce_along(lambda *i: g[i] * y[i], shape, axis, te.sum, "row_sum", dtype)
        grad = te.compute(shape, lambda *i: y[i] * (g[i] - total[row(i)]), name="softmax_grad")
    if causal:  # the masked logits' gradient (also in a row with no key, whose output is NaN)
        grad = _causally_masked(grad, shape, tirx.const(0, dtype), "masked_grad")
    return [g, y], [grad]
