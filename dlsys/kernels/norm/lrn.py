"""Local response normalisation across channels (AlexNet's, GoogLeNet's; ONNX's LRN) and its
adjoint, for a tensor (N, C, ...) of any rank, run with ``reduce.schedule_each_block``.

``Y = X / (bias + alpha / size * S) ** beta`` where ``S`` at channel c sums ``X ** 2`` over
the channels ``c - lo`` to ``c + hi`` that exist (``lo = (size - 1) // 2``, ``hi = size - 1
- lo``, as ONNX places an even window). The window's terms are few (``size``, 5 in
AlexNet): each sum is read where it is used, in float32.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape


def _window_sum(term: Callable, shape: Shape, size: int, start: int, name: str,
                dtype: str) -> te.Tensor:
    """``sum(term(n, c + start + r, ...))`` over ``r < size``, the channels outside
    ``[0, C)`` left out."""
    channels = shape[1]
    r = te.reduce_axis((0, size), name=f"{name}_r")
    zero = tirx.const(0, dtype)

    def body(n, c, *rest):
        channel = c + start + r
        inside = tirx.all(channel >= 0, channel < channels)
        safe = tirx.max(tirx.min(channel, channels - 1), 0)  # never read outside, even masked
        return te.sum(tirx.Select(inside, term(n, safe, *rest), zero), axis=r)

    return te.compute(shape, body, name=name)


def _denominator(x: te.Tensor, shape: Shape, size: int, alpha: float, bias: float) -> te.Tensor:
    """``bias + alpha / size * S``, S the sum of squares in each channel's window."""
    lo = (size - 1) // 2
    total = _window_sum(lambda *i: x[i] * x[i], shape, size, -lo, "window", x.dtype)
    scale, offset = tirx.const(alpha / size, x.dtype), tirx.const(bias, x.dtype)
    return te.compute(shape, lambda *i: offset + scale * total[i], name="denominator")


def lrn(shape: Shape, size: int, alpha: float, beta: float, bias: float, dtype: str):
    """``Y = X * d ** -beta`` with ``d`` the window's ``bias + alpha / size * S``; input X."""
    x = te.placeholder(shape, dtype=dtype, name="X")
    d = _denominator(x, shape, size, alpha, bias)
    power = tirx.const(-beta, dtype)
    return [x], [te.compute(shape, lambda *i: x[i] * te.power(d[i], power), name="lrn")]


def lrn_gradient(shape: Shape, size: int, alpha: float, beta: float, bias: float, dtype: str):
    """The adjoint of ``lrn`` at X for the upstream gradient G; inputs G, X.

    ``dX_i = G_i d_i ** -beta - 2 alpha beta / size * X_i * sum(G_c X_c d_c ** (-beta - 1))``
    over the channels c whose window holds i: ``c`` from ``i - hi`` to ``i + lo``."""
    g = te.placeholder(shape, dtype=dtype, name="G")
    x = te.placeholder(shape, dtype=dtype, name="X")
    d = _denominator(x, shape, size, alpha, bias)
    lo = (size - 1) // 2
    hi = size - 1 - lo
    weighted = te.compute(shape, lambda *i: g[i] * x[i] * te.power(
        d[i], tirx.const(-beta - 1, dtype)), name="weighted")
    spread = _window_sum(lambda *i: weighted[i], shape, size, -hi, "spread", dtype)
    factor = tirx.const(2 * alpha * beta / size, dtype)
    power = tirx.const(-beta, dtype)
    return [g, x], [te.compute(shape, lambda *i: g[i] * te.power(d[i], power)
                               - factor * x[i] * spread[i], name="lrn_grad")]
