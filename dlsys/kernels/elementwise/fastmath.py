"""``exp``, ``tanh``, ``erf`` and the standard normal distribution function as float32
formulas that LLVM vectorises, for softmax, GELU and ONNX's Erf.

TVM lowers ``exp`` and ``erf`` to calls of the C library, one element at a time: on znver4
a float32 ``exp`` took 3 ns an element, ``erf`` 19 ns and ``tanh`` 12 ns, where these
formulas take a few hundredths of that, vectorised. They stay within a few float32
roundings (``exp`` within 2e-7 relative; ``normal_cdf`` within 3e-7 relative, in both tails,
as it never computes ``1 + erf`` of a value near -1). float64 keeps the C library's
functions, exact to their last bit, which the float64 tests against PyTorch read.

The polynomials' coefficients were fitted here, by least squares on Chebyshev nodes
weighted for relative error, against Python's ``math.erf``/``math.erfc`` in float64
(``tests/ops/test_transformer_ops.py`` checks the result against ``math``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tvm import te, tirx

LOG2_E = 1 / math.log(2)
# ln 2 in two parts: n * LN2_HIGH is exact for the |n| <= 160 that occur, so r = x - n ln 2
# keeps its low bits.
LN2_HIGH, LN2_LOW = 0.693145751953125, 1.428606765330187e-06
# Inputs are clamped to this range: exp(-110) rounds to 0 in float32 (so exp(-inf) is an
# exact 0, a masked position's probability), exp(89) to inf.
EXP_MIN, EXP_MAX = -110.0, 89.0

# erf(z) / z = sum(ERF_SMALL[k] * z**(2k)) for |z| < 1 (1.4e-9 relative).
ERF_SMALL = (1.1283791665105312, -0.3761262884248163, 0.11283612402789725,
             -0.026854807016291195, 0.005190049964442867, -0.0008024316632880915,
             7.898068539007842e-05)
# erfc(a) exp(a**2) a = sum(ERFC_LARGE[k] * s**k) for 1 <= a <= ERFC_MAX, where
# s = (2 / a - (1 + 1 / ERFC_MAX)) / (1 - 1 / ERFC_MAX) runs over [-1, 1] (4e-8 relative).
ERFC_MAX = 9.0
ERFC_LARGE = (0.5014081742502254, -0.07566755425942967, -0.0037024222217419034,
              0.008443976669441647, -0.0037283522950913948, 0.0008880835074055282,
              6.011979964294504e-05, -0.00023437768388129217, 0.0001497775127237935,
              -2.3113075828738542e-05, -1.0744911438519305e-05)


def tanh(x) -> tirx.PrimExpr:
    """``tanh(x)``; in float32, ``x P(x**2)`` near 0, else ``1 - 2 / (exp(2 |x|) + 1)`` with
    the sign of x (within 2e-7 relative; a NaN takes the near branch, which keeps it)."""
    if dtype_of(x) != "float32":
        return te.tanh(x)

    def body(v):
        one = _const(1.0, v)
        a = tirx.abs(v)
        grown = exp(_const(2.0, v) * tirx.min(a, _const(TANH_SATURATED, v)), keep_nan=False)
        far = bind(one - _const(2.0, v) / (grown + one),
                   lambda t: tirx.Select(v < _const(0.0, v), -t, t))
        near = v * _polynomial(v * v, TANH_SMALL)
        return tirx.Select(a >= _const(TANH_SMALL_MAX, v), far, near)

    return bind(x, body)


def dtype_of(x) -> str:
    """The type of the expression ``x`` (a load has ``dtype``; an arithmetic node ``ty``)."""
    return str(getattr(x, "dtype", None) or x.ty.dtype)


# tanh(u) / u = sum(TANH_SMALL[k] * u**(2k)) for |u| < TANH_SMALL_MAX (1e-9 relative).
TANH_SMALL_MAX = 0.55
TANH_SMALL = (0.999999999583774, -0.3333331563041039, 0.1333255853720456,
              -0.053850605247639134, 0.02106689900914096, -0.006269234406805411)
# tanh(9) rounds to 1 in float32: past it, exp(2 |u|) need not grow.
TANH_SATURATED = 9.0


def _const(value: float, like) -> tirx.PrimExpr:
    return tirx.const(value, dtype_of(like))


def _polynomial(x, coefficients) -> tirx.PrimExpr:
    """``sum(coefficients[k] * x**k)`` by Horner's rule."""
    result = _const(coefficients[-1], x)
    for c in reversed(coefficients[:-1]):
        result = result * x + _const(c, x)
    return result


def exp(x, keep_nan: bool = True) -> tirx.PrimExpr:
    """``exp(x)``; in float32, ``2**n * exp(r)`` with ``r = x - n ln 2`` in [-ln2/2, ln2/2],
    ``exp(r)`` its Taylor polynomial of degree 7 (truncation 5e-9), ``2**n`` built in the
    exponent field as two factors (so that each stays a normal number). ``keep_nan=False``
    leaves a NaN's value undefined, for a caller whose result takes its NaN elsewhere."""
    if dtype_of(x) != "float32":
        return te.exp(x)
    return bind(x, lambda v: bind(
        tirx.max(tirx.min(v, _const(EXP_MAX, v)), _const(EXP_MIN, v)),
        lambda clamped: bind(
            te.floor(clamped * _const(LOG2_E, v) + _const(0.5, v)),
            lambda n: _scaled_taylor(v, clamped, n, keep_nan))))


def _scaled_taylor(x, clamped, n, keep_nan: bool) -> tirx.PrimExpr:
    def body(r):
        taylor = _polynomial(r, [1.0 / math.factorial(k) for k in range(8)])
        whole = n.astype("int32")
        half = tirx.shift_right(whole, tirx.const(1, "int32"))
        # One factor at a time, so that exp(88.5) = 0.7 * 2**128 stays finite.
        value = taylor * _power_of_two(half) * _power_of_two(whole - half)
        if not keep_nan:
            return value
        return tirx.Select(is_nan(x), x, value)  # the clamp would have made NaN a number

    return bind(clamped - n * _const(LN2_HIGH, x) - n * _const(LN2_LOW, x), body)


def is_nan(x) -> tirx.PrimExpr:
    """Whether ``x`` (float32 or float64) is NaN, from its bits: with LLVM's fast-math flags
    any float comparison with NaN may be folded (``x != x`` to false)."""
    if dtype_of(x) == "float64":
        bits = tirx.reinterpret("int64", x) & tirx.const(0x7FFFFFFFFFFFFFFF, "int64")
        return bits > tirx.const(0x7FF0000000000000, "int64")
    bits = tirx.reinterpret("int32", x) & tirx.const(0x7FFFFFFF, "int32")
    return bits > tirx.const(0x7F800000, "int32")


def bind(value, body) -> tirx.PrimExpr:
    """``body(v)`` with ``v`` bound to ``value`` once (the expression trees would otherwise
    repeat ``value`` at each use)."""
    if isinstance(value, tirx.Var):
        return body(value)
    var = tirx.Var("v", dtype_of(value))
    return tirx.Let(var, value, body(var))


def _power_of_two(n) -> tirx.PrimExpr:
    """``2.0**n`` in float32 for an int32 ``n`` in [-126, 127]: ``n + 127`` as the exponent."""
    biased = tirx.shift_left(n + tirx.const(127, "int32"), tirx.const(23, "int32"))
    return tirx.reinterpret("float32", biased)


def normal_cdf(x) -> tirx.PrimExpr:
    """``Phi(x) = erfc(-x / sqrt(2)) / 2``, the standard normal distribution function; in
    float32, ``(1 + erf(z)) / 2`` near 0 (``|z| < 1``), else from ``erfc(|z|)``, so that
    neither tail loses its digits to a cancellation."""
    return with_normal_cdf_pdf(x, lambda cdf, pdf: cdf)


def normal_pdf(x) -> tirx.PrimExpr:
    """``phi(x) = exp(-x**2 / 2) / sqrt(2 pi)``, the standard normal density."""
    return with_normal_cdf_pdf(x, lambda cdf, pdf: pdf)


def with_normal_cdf_pdf(x, body: Callable) -> tirx.PrimExpr:
    """``body(Phi(x), phi(x))``: in float32 both from one ``exp(-x**2 / 2)``, which the
    density is and ``erfc``'s tail multiplies (GELU's gradient reads both)."""
    half = _const(0.5, x)
    if dtype_of(x) != "float32":
        pdf = te.exp(_const(-0.5, x) * x * x) * _const(1 / math.sqrt(2 * math.pi), x)
        return body(half + half * te.erf(x * _const(math.sqrt(0.5), x)), pdf)
    z = x * _const(math.sqrt(0.5), x)
    # A NaN x reaches each result through z (and the cdf's near branch), not through exp.
    return bind(z, lambda z: bind(exp(-z * z, keep_nan=False), lambda gauss: body(
        _cdf_float32(z, gauss), gauss * _const(1 / math.sqrt(2 * math.pi), z))))


def _cdf_float32(z, gauss) -> tirx.PrimExpr:
    """Phi at ``x = sqrt(2) z``, given ``gauss = exp(-z**2)``."""
    half, one = _const(0.5, z), _const(1.0, z)
    near = half + half * z * _polynomial(z * z, ERF_SMALL)
    far = bind(half * _erfc_tail(z, gauss),
               lambda tail: tirx.Select(z > _const(0.0, z), one - tail, tail))
    # NaN fails every comparison: it takes the near branch, which keeps it.
    return tirx.Select(tirx.abs(z) >= one, far, near)


def _erfc_tail(z, gauss) -> tirx.PrimExpr:
    """``erfc(|z|)`` for ``|z| >= 1``, given ``gauss = exp(-z**2)`` (any value elsewhere)."""
    one = _const(1.0, z)
    inverse = one / tirx.max(tirx.abs(z), one)  # 1 / |z|, kept finite where |z| < 1
    s = (_const(2.0, z) * inverse - _const(1 + 1 / ERFC_MAX, z)) * _const(
        1 / (1 - 1 / ERFC_MAX), z)
    # Past ERFC_MAX the fit extrapolates a little, while exp(-z**2) underflows to 0.
    return gauss * inverse * _polynomial(s, ERFC_LARGE)


def erf(x) -> tirx.PrimExpr:
    """``erf(x)``; in float32, ``x P(x**2)`` for ``|x| < 1``, else ``1 - erfc(|x|)`` with the
    sign of x (erfc from the same fit as ``normal_cdf``'s tails)."""
    if dtype_of(x) != "float32":
        return te.erf(x)

    def body(z):
        one = _const(1.0, z)
        near = z * _polynomial(z * z, ERF_SMALL)
        far = bind(one - _erfc_tail(z, exp(-z * z, keep_nan=False)),
                   lambda e: tirx.Select(z < _const(0.0, z), -e, e))
        # NaN takes the near branch, which keeps it.
        return tirx.Select(tirx.abs(z) >= one, far, near)

    return bind(x, body)
