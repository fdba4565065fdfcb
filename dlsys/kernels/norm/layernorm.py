"""Compute definitions of layer normalisation over the last axis of a tensor of any rank,
``gamma`` and ``beta`` of shape (C,): the forward pass and the adjoints of ``X`` and
``gamma``. (That of ``beta``, a sum of ``G`` over the rows, is the reduce family's sum.)

Each row's mean and variance are sums taken in ``ACCUMULATOR`` (float32 partials of at most
``BLOCK_TERMS`` terms, as the reduce family's; two passes over the row:
the variance is the mean of squared deviations, which does not cancel as the difference of
mean square and squared mean does). The backward kernels recompute them from ``X``: a row
is cheap to read again, and no statistics have to stay alive between the passes.
"""

from __future__ import annotations

from tvm import te, tirx

from dlsys.kernels.common.compute import (
    ACCUMULATOR,
    BLOCK_TERMS,
    Shape,
    accumulate,
    block_sums,
)
from dlsys.kernels.norm.rows import reduce_along, row_lanes


def _row_sum(term, shape: Shape, name: str, dtype: str, scale: float = 1.0) -> te.Tensor:
    """``scale * sum(term)`` along each row, added in ``ACCUMULATOR`` and rounded to
    ``dtype`` once. As the reduce family's sums (``common.compute.block_sums``): each vector
    lane adds its share of the row in ``term``'s type when that is at most ``BLOCK_TERMS``
    terms (float32 adds at twice float64's width), the lanes' total is taken in
    ``ACCUMULATOR``."""
    lanes = row_lanes(shape[-1], dtype)
    if shape[-1] // lanes <= BLOCK_TERMS:
        total = reduce_along(term, shape, -1, te.sum, f"{name}_sum", dtype, ACCUMULATOR)
    else:
        total = reduce_along(lambda *i: accumulate(term(*i)), shape, -1, te.sum,
                             f"{name}_sum", ACCUMULATOR)
    factor = tirx.const(scale, ACCUMULATOR)
    return te.compute(total.shape, lambda *r: (total[r] * factor).astype(dtype), name=name)


def _statistics(x: te.Tensor, shape: Shape, eps: float, dtype: str):
    """Each row's mean and ``1 / sqrt(var + eps)``, shaped ``shape[:-1]``."""
    inv_c = 1.0 / shape[-1]
    mean = _row_sum(lambda *i: x[i], shape, "mean", dtype, inv_c)

    def deviation_squared(*i):
        d = x[i] - mean[i[:-1]]
        return d * d

    var = _row_sum(deviation_squared, shape, "var", dtype, inv_c)
    one, epsilon = tirx.const(1, dtype), tirx.const(eps, dtype)
    inv_std = te.compute(var.shape, lambda *r: one / te.sqrt(var[r] + epsilon), name="inv_std")
    return mean, inv_std


def _x_hat(x: te.Tensor, shape: Shape, eps: float, dtype: str):
    """The normalised ``X`` (elementwise: inlined into its readers) and ``inv_std``."""
    mean, inv_std = _statistics(x, shape, eps, dtype)
    x_hat = te.compute(shape, lambda *i: (x[i] - mean[i[:-1]]) * inv_std[i[:-1]], name="x_hat")
    return x_hat, inv_std


def layernorm(shape: Shape, eps: float, dtype: str):
    """``(X - mean) / sqrt(var + eps) * gamma + beta``, statistics per row of the last axis;
    inputs X, gamma and beta (C,)."""
    x = te.placeholder(shape, dtype=dtype, name="X")
    gamma, beta = (te.placeholder((shape[-1],), dtype=dtype, name=n) for n in ("gamma", "beta"))
    x_hat, _ = _x_hat(x, shape, eps, dtype)
    out = te.compute(shape, lambda *i: x_hat[i] * gamma[i[-1]] + beta[i[-1]], name="layernorm")
    return [x, gamma, beta], [out]


def layernorm_gradient(shape: Shape, eps: float, dtype: str):
    """The adjoint of ``layernorm`` in ``X`` for the upstream gradient ``G``, with
    ``H = G * gamma``: ``inv_std * (H - mean(H) - x_hat * mean(H * x_hat))``, means per row;
    inputs G, X and gamma."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    x = te.placeholder(shape, dtype=dtype, name="X")
    gamma = te.placeholder((shape[-1],), dtype=dtype, name="gamma")
    x_hat, inv_std = _x_hat(x, shape, eps, dtype)
    h = te.compute(shape, lambda *i: g[i] * gamma[i[-1]], name="scaled_grad")
    inv_c = 1.0 / shape[-1]
    h_mean = _row_sum(lambda *i: h[i], shape, "h_mean", dtype, inv_c)
    hx_mean = _row_sum(lambda *i: h[i] * x_hat[i], shape, "hx_mean", dtype, inv_c)
    out = te.compute(shape, lambda *i: inv_std[i[:-1]] * (
        h[i] - h_mean[i[:-1]] - x_hat[i] * hx_mean[i[:-1]]), name="layernorm_grad")
    return [g, x, gamma], [out]


def layernorm_scale_gradient(shape: Shape, eps: float, dtype: str):
    """The adjoint of ``layernorm`` in ``gamma``: the sum over the rows of ``G * x_hat``,
    shaped (C,); inputs G and X. Rows are summed in blocks (``block_sums``), whose partials
    are added in ``ACCUMULATOR``."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    x = te.placeholder(shape, dtype=dtype, name="X")
    rows, c = _rows(shape), shape[-1]
    flat = (rows, c)
    x2 = te.compute(flat, lambda r, j: x[_unflatten(r, shape) + (j,)], name="x_rows")
    mean, inv_std = _statistics(x2, flat, eps, dtype)
    partial = block_sums(lambda r, j: g[_unflatten(r, shape) + (j,)] * (
        (x2[r, j] - mean[r]) * inv_std[r]), rows, (c,), "column_blocks")
    b = te.reduce_axis((0, int(partial.shape[0])), name="column_b")
    total = te.compute((c,), lambda j: te.sum(accumulate(partial[b, j]), axis=b),
                       name="scale_sum")
    return [g, x], [te.compute((c,), lambda j: total[j].astype(dtype), name="scale_grad")]


def _rows(shape: Shape) -> int:
    count = 1
    for d in shape[:-1]:
        count *= d
    return count


def _unflatten(row, shape: Shape) -> tuple:
    """The index of the leading axes of ``shape`` at flat row ``row``."""
    index = []
    for d in reversed(shape[:-1]):
        index.append(row % d)
        row = row // d
    return tuple(reversed(index))
