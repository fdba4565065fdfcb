"""Compute definitions of batch normalisation over NCHW tensors: per-channel statistics
over the batch and spatial axes (N, H, W).

Training kernels recompute the batch statistics they need from ``X`` rather than reading
them from another kernel: the statistics are cheap next to the normalisation itself, and no
extra values have to stay alive between the forward and backward passes.
"""

from __future__ import annotations

from tvm import te, tirx

from dlsys.kernels.compute import Shape


def _channel_mean(values, shape: Shape, name: str, dtype: str):
    """Per-channel mean of ``values(n, c, h, w)`` over (N, H, W)."""
    n, c, h, w = shape
    rn = te.reduce_axis((0, n), name=f"{name}_n")
    rh = te.reduce_axis((0, h), name=f"{name}_h")
    rw = te.reduce_axis((0, w), name=f"{name}_w")
    count = tirx.const(1.0 / (n * h * w), dtype)
    return te.compute((c,), lambda ch: te.sum(values(rn, ch, rh, rw) * count,
                                              axis=[rn, rh, rw]), name=name)


def _batch_statistics(x: te.Tensor, shape: Shape, dtype: str):
    """Mean and biased variance per channel (two passes, for accuracy)."""
    mean = _channel_mean(lambda *i: x[i], shape, "mean", dtype)
    var = _channel_mean(lambda n, c, h, w: (x[n, c, h, w] - mean[c]) * (x[n, c, h, w] - mean[c]),
                        shape, "var", dtype)
    return mean, var


def _inverse_std(var: te.Tensor, eps: float, dtype: str) -> te.Tensor:
    return te.compute(var.shape, lambda c: tirx.const(1, dtype)
                      / te.sqrt(var[c] + tirx.const(eps, dtype)), name="inv_std")


def batchnorm_normalize(shape: Shape, eps: float, dtype: str):
    """``(X - mean) / sqrt(var + eps)`` with the batch's per-channel mean and variance."""
    x = te.placeholder(shape, dtype=dtype, name="X")
    mean, var = _batch_statistics(x, shape, dtype)
    inv_std = _inverse_std(var, eps, dtype)
    out = te.compute(shape, lambda n, c, h, w: (x[n, c, h, w] - mean[c]) * inv_std[c],
                     name="normalized")
    return [x], [out]


def batchnorm_normalize_gradient(shape: Shape, eps: float, dtype: str):
    """The adjoint of ``batchnorm_normalize`` at ``X`` for the upstream gradient ``G``:
    ``inv_std * (G - mean(G) - X_hat * mean(G * X_hat))``, means per channel."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    x = te.placeholder(shape, dtype=dtype, name="X")
    mean, var = _batch_statistics(x, shape, dtype)
    inv_std = _inverse_std(var, eps, dtype)
    x_hat = te.compute(shape, lambda n, c, h, w: (x[n, c, h, w] - mean[c]) * inv_std[c],
                       name="x_hat")
    g_mean = _channel_mean(lambda *i: g[i], shape, "g_mean", dtype)
    gx_mean = _channel_mean(lambda *i: g[i] * x_hat[i], shape, "gx_mean", dtype)
    out = te.compute(shape, lambda n, c, h, w: inv_std[c] * (
        g[n, c, h, w] - g_mean[c] - x_hat[n, c, h, w] * gx_mean[c]), name="normalize_grad")
    return [g, x], [out]


def running_statistic(shape: Shape, statistic: str, momentum: float, dtype: str):
    """``(1 - momentum) * R + momentum * s`` where ``s`` is the batch's per-channel mean or
    unbiased variance of ``X`` (PyTorch's running statistics); inputs ``R`` (C,) and ``X``."""
    n, c, h, w = shape
    running = te.placeholder((c,), dtype=dtype, name="R")
    x = te.placeholder(shape, dtype=dtype, name="X")
    mean, var = _batch_statistics(x, shape, dtype)
    count = n * h * w
    # The unbiased variance is undefined for one value per channel; the biased one (0) is kept.
    correction = count / (count - 1) if count > 1 else 1.0
    stat = mean if statistic == "mean" else te.compute(
        (c,), lambda ch: var[ch] * tirx.const(correction, dtype), name="unbiased_var")
    keep, take = tirx.const(1.0 - momentum, dtype), tirx.const(momentum, dtype)
    out = te.compute((c,), lambda ch: keep * running[ch] + take * stat[ch], name="running")
    return [running, x], [out]


def batchnorm_inference(shape: Shape, eps: float, dtype: str):
    """``gamma * (X - running_mean) / sqrt(running_var + eps) + beta``: inputs X, gamma, beta,
    running mean and running variance."""
    c = shape[1]
    x = te.placeholder(shape, dtype=dtype, name="X")
    gamma, beta, mean, var = (te.placeholder((c,), dtype=dtype, name=name)
                              for name in ("gamma", "beta", "mean", "var"))
    inv_std = _inverse_std(var, eps, dtype)
    out = te.compute(shape, lambda n, ch, h, w: (x[n, ch, h, w] - mean[ch]) * inv_std[ch]
                     * gamma[ch] + beta[ch], name="batchnorm")
    return [x, gamma, beta, mean, var], [out]
