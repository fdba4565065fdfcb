"""Compute definitions of batch normalisation over NCHW tensors: per-channel statistics
over the batch and spatial axes (N, H, W).

Training kernels recompute the batch statistics they need from ``X`` rather than reading
them from another kernel: the statistics are cheap next to the normalisation itself, and no
extra values have to stay alive between the forward and backward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import ACCUMULATOR, Shape, accumulate, block_sums
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue


def _channel_mean(values, shape: Shape, name: str, dtype: str, mean: bool = True):
    """Per-channel mean (or sum) of ``values(n, c, h, w)`` over (N, H, W).

    Three blocks: each plane position's float32 sum over blocks of images
    (``{name}_partial``, shaped (blocks, C, H * W), ``compute.block_sums``), their
    per-channel total in ``ACCUMULATOR`` (``{name}_sum``), then that total scaled and
    rounded to ``dtype`` (``{name}``). The partials index a plane as one axis, so that the
    schedule's vector of plane positions reads and writes them contiguously.
    """
    n, c, h, w = shape
    partial = block_sums(lambda row, ch, p: values(row, ch, p // w, p % w), n, (c, h * w),
                         f"{name}_partial")
    rb, rp = (te.reduce_axis((0, extent), name=f"{name}_{axis}")
              for axis, extent in (("b", int(partial.shape[0])), ("p", h * w)))
    total = te.compute((c,), lambda ch: te.sum(accumulate(partial[rb, ch, rp]), axis=[rb, rp]),
                       name=f"{name}_sum")
    count = tirx.const(1.0 / (n * h * w) if mean else 1.0, ACCUMULATOR)
    return te.compute((c,), lambda ch: (total[ch] * count).astype(dtype), name=name)


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
    return [g, x], [_normalize_gradient(g, x, None, shape, eps, dtype)]


def _x_hat(x: te.Tensor, shape: Shape, eps: float, dtype: str):
    """The normalised ``X`` (an elementwise block, which the schedule inlines into its
    readers) and the per-channel ``inv_std``."""
    mean, var = _batch_statistics(x, shape, dtype)
    inv_std = _inverse_std(var, eps, dtype)
    x_hat = te.compute(shape, lambda n, c, h, w: (x[n, c, h, w] - mean[c]) * inv_std[c],
                       name="x_hat")
    return x_hat, inv_std


def _normalize_gradient(g: te.Tensor, x: te.Tensor, gamma: te.Tensor | None, shape: Shape,
                        eps: float, dtype: str) -> te.Tensor:
    x_hat, inv_std = _x_hat(x, shape, eps, dtype)
    if gamma is not None:  # the affine's scale folded into the per-channel factor
        inv_std = te.compute(inv_std.shape, lambda c: inv_std[c] * gamma[c], name="scale")
    g_mean = _channel_mean(lambda *i: g[i], shape, "g_mean", dtype)
    gx_mean = _channel_mean(lambda *i: g[i] * x_hat[i], shape, "gx_mean", dtype)
    return te.compute(shape, lambda n, c, h, w: inv_std[c] * (
        g[n, c, h, w] - g_mean[c] - x_hat[n, c, h, w] * gx_mean[c]), name="normalize_grad")


def batchnorm_affine(shape: Shape, eps: float, dtype: str):
    """``gamma * (X - mean) / sqrt(var + eps) + beta`` with the batch's per-channel mean and
    variance: inputs X, gamma and beta (C,)."""
    x = te.placeholder(shape, dtype=dtype, name="X")
    gamma, beta = (te.placeholder((shape[1],), dtype=dtype, name=n) for n in ("gamma", "beta"))
    mean, var = _batch_statistics(x, shape, dtype)
    inv_std = _inverse_std(var, eps, dtype)
    scale = te.compute(inv_std.shape, lambda c: inv_std[c] * gamma[c], name="scale")
    out = te.compute(shape, lambda n, c, h, w: (x[n, c, h, w] - mean[c]) * scale[c] + beta[c],
                     name="affine")
    return [x, gamma, beta], [out]


def batchnorm_affine_epilogue(shape: Shape, eps: float,
                              epilogue: Sequence[tuple[Epilogue, Callable]], dtype: str):
    """``epilogue(batchnorm_affine)`` in one kernel (an activation after the batch norm);
    inputs X, gamma, beta, then each epilogue step's operand."""
    inputs, (out,) = batchnorm_affine(shape, eps, dtype)
    operands, out = apply_epilogue(out, epilogue, dtype)
    return [*inputs, *operands], [out]


def batchnorm_affine_gradient(shape: Shape, eps: float, dtype: str):
    """The adjoint of ``batchnorm_affine`` in ``X`` for the upstream gradient ``G``: that of
    the normalisation for ``gamma * G``; inputs G, X and gamma."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    x = te.placeholder(shape, dtype=dtype, name="X")
    gamma = te.placeholder((shape[1],), dtype=dtype, name="gamma")
    return [g, x, gamma], [_normalize_gradient(g, x, gamma, shape, eps, dtype)]


def batchnorm_parameter_gradient(shape: Shape, parameter: str, eps: float, dtype: str):
    """The gradient of ``batchnorm_affine``'s ``gamma`` (``parameter`` "scale": inputs G and
    X, the per-channel sum of ``G * X_hat``) or ``beta`` ("shift": input G, the per-channel
    sum of ``G``)."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    if parameter == "shift":
        return [g], [_channel_mean(lambda *i: g[i], shape, "shift_grad", dtype, mean=False)]
    x = te.placeholder(shape, dtype=dtype, name="X")
    x_hat, _ = _x_hat(x, shape, eps, dtype)
    return [g, x], [_channel_mean(lambda *i: g[i] * x_hat[i], shape, "scale_grad", dtype,
                                  mean=False)]


def channel_sum(shape: Shape, out_shape: Shape, dtype: str):
    """``reduce_sum_to`` of an NCHW tensor to one value per channel, shaped ``out_shape``
    ((C, 1, 1) or (1, C, 1, 1): a convolution's bias gradient), under this family's
    schedule, which reads each channel's planes as runs rather than gathering channels."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    total = _channel_mean(lambda *i: g[i], shape, "channel_sum", dtype, mean=False)
    out = te.compute(out_shape, lambda *i: total[i[-3]], name="channel_sum_out")
    return [g], [out]


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
