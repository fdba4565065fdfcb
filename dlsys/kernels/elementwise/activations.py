"""The scalar formulas of the activations, math functions, comparisons and selection that
ONNX models use (``dlsys.ops.activations``), in the style of ``compute``: elements of the
inputs, then the kernel's constants, in; the output element out. ``elementwise`` applies
them over broadcast inputs and a fused epilogue applies the unary ones to its result.

Comparisons and logical operators give 1.0 where true and 0.0 where false, in the kernel's
type; a condition is true where it is not 0, as a bool cast to a number is.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from dlsys.kernels.elementwise import fastmath


def _const(value: float, like) -> tirx.PrimExpr:
    return tirx.const(value, fastmath.dtype_of(like))


def _mask(condition, like) -> tirx.PrimExpr:
    """1.0 where ``condition`` holds, else 0.0, in the type of ``like``."""
    return tirx.Select(condition, _const(1.0, like), _const(0.0, like))


# ------------------------------------------------------------------- functions
def sqrt(x):
    return te.sqrt(x)


def abs_(x):
    return tirx.abs(x)


def sign(x):
    # 0 and NaN fail both comparisons and stay themselves, as in numpy.
    return tirx.Select(x > _const(0.0, x), _const(1.0, x),
                       tirx.Select(x < _const(0.0, x), _const(-1.0, x), x))


def floor(x):
    return te.floor(x)


def ceil(x):
    return te.ceil(x)


def round_(x):
    # Halves to even, as numpy and ONNX round (nearbyint in the default rounding mode).
    return tirx.nearbyint(x)


def sin(x):
    return te.sin(x)


def cos(x):
    return te.cos(x)


def atan(x):
    return te.atan(x)


def asinh(x):
    return te.asinh(x)


def erf(x):
    # Vectorised in float32: TVM's erf is a C library call per element (fastmath).
    return fastmath.erf(x)


def softplus(x):
    """``log(1 + exp(x))`` as ``max(x, 0) + log1p(exp(-|x|))``: exp never overflows, and
    far below 0 the result keeps its digits (log1p of a tiny number is that number)."""
    zero = _const(0.0, x)
    return tirx.max(x, zero) + tirx.log1p(fastmath.exp(-tirx.abs(x)))


def pow_const(x, k):
    """``x ** k`` for a number ``k``: the common exponents as products (exact where the
    product is, and vectorised), any other through the C library's pow."""
    exponent = float(k.value)
    if exponent == 0:
        return _const(1.0, x)  # as numpy: x ** 0 is 1, also for 0, inf and NaN
    if exponent == 1:
        return x
    if exponent == 2:
        return x * x
    if exponent == 3:
        return x * x * x
    if exponent == 0.5:
        return te.sqrt(x)
    if exponent == -1:
        return _const(1.0, x) / x
    return te.power(x, k)


def pow_(x, y):
    return te.power(x, y)


# ----------------------------------------------------------------- activations
def clip(x, low, high):
    """``x`` limited to [low, high]; an infinite bound is no bound. A low bound above the
    high one gives the high one (ONNX's Clip). NaN fails both comparisons and stays NaN."""
    if not math.isinf(float(low.value)):
        x = tirx.Select(x < low, low, x)
    if not math.isinf(float(high.value)):
        x = fastmath.bind(x, lambda v: tirx.Select(v > high, high, v))
    return x


def clip_gradient(x, g, low, high):
    """``g`` where ``low <= x <= high``, else 0: the adjoint of clip at its input ``x``."""
    inside = tirx.const(True, "bool")
    if not math.isinf(float(low.value)):
        inside = inside & (x >= low)
    if not math.isinf(float(high.value)):
        inside = inside & (x <= high)
    return tirx.Select(inside, g, _const(0.0, g))


def leaky_relu(x, alpha):
    # x > 0 as in PyTorch: NaN takes the other branch, where alpha * NaN keeps it.
    return tirx.Select(x > _const(0.0, x), x, alpha * x)


def leaky_relu_gradient(x, g, alpha):
    """``g`` where ``x > 0``, else ``alpha * g``."""
    return tirx.Select(x > _const(0.0, x), g, alpha * g)


def prelu(x, slope):
    return tirx.Select(x > _const(0.0, x), x, slope * x)


def elu(x, alpha, scale):
    """``scale * x`` above 0, ``scale * alpha * (exp(x) - 1)`` elsewhere: ELU (scale 1) and
    SELU."""
    negative = scale * alpha * (fastmath.exp(x) - _const(1.0, x))
    return tirx.Select(x > _const(0.0, x), scale * x, negative)


def elu_gradient(x, g, alpha, scale):
    """``elu'(x) * g``: ``scale`` above 0, ``scale * alpha * exp(x)`` elsewhere."""
    return tirx.Select(x > _const(0.0, x), scale * g, scale * alpha * fastmath.exp(x) * g)


def elu_second(x, g, alpha, scale):
    """``elu''(x) * g``: 0 above 0, ``scale * alpha * exp(x)`` elsewhere."""
    return tirx.Select(x > _const(0.0, x), _const(0.0, g), scale * alpha * fastmath.exp(x) * g)


def hard_swish(x):
    """``x * clip(x / 6 + 1 / 2, 0, 1)`` (ONNX's HardSwish, PyTorch's hardswish)."""
    zero, one = _const(0.0, x), _const(1.0, x)
    return fastmath.bind(x * _const(1 / 6, x) + _const(0.5, x), lambda gate: x * tirx.Select(
        gate < zero, zero, tirx.Select(gate > one, one, gate)))


def hard_swish_gradient(x, g):
    """``hard_swish'(x) * g``: 0 below -3, ``x / 3 + 1 / 2`` up to 3, then 1 (PyTorch's)."""
    slope = x * _const(1 / 3, x) + _const(0.5, x)
    middle = tirx.Select(x <= _const(3.0, x), slope * g, g)
    return tirx.Select(x < _const(-3.0, x), _const(0.0, g), middle)


def hard_swish_second(x, g):
    """``hard_swish''(x) * g``: ``g / 3`` strictly between -3 and 3, else 0."""
    inside = (x > _const(-3.0, x)) & (x < _const(3.0, x))
    return tirx.Select(inside, g * _const(1 / 3, g), _const(0.0, g))


# -------------------------------------------------------- comparison, selection
def equal(x, y):
    return _mask(x == y, x)


def less(x, y):
    return _mask(x < y, x)


def greater(x, y):
    return _mask(x > y, x)


def less_equal(x, y):
    return _mask(x <= y, x)


def greater_equal(x, y):
    return _mask(x >= y, x)


def _true(x) -> tirx.PrimExpr:
    # NaN is true, as numpy and a cast to bool take it; told from its bits, since under
    # LLVM's fast-math flags a comparison with NaN may be folded either way.
    return tirx.Select(fastmath.is_nan(x), tirx.const(True, "bool"), x != _const(0.0, x))


def logical_and(x, y):
    return _mask(_true(x) & _true(y), x)


def logical_or(x, y):
    return _mask(_true(x) | _true(y), x)


def logical_xor(x, y):
    # Where x is true, y must be false, and the other way round (LLVM rejects a != between
    # vectors of bools).
    return _mask(tirx.Select(_true(x), y == _const(0.0, y), _true(y)), x)


def logical_not(x):
    return _mask(x == _const(0.0, x), x)


def is_nan(x):
    return _mask(fastmath.is_nan(x), x)


def is_inf(x, negative, positive):
    """1.0 where ``x`` is an infinity of a sign asked for (``negative``, ``positive``: 1.0 or
    0.0), from its bits: under LLVM's fast-math flags a comparison with inf may be folded."""
    wide = fastmath.dtype_of(x) == "float64"
    int_type, sign_bit = ("int64", 63) if wide else ("int32", 31)
    exponent = 0x7FF0000000000000 if wide else 0x7F800000
    bits = tirx.reinterpret(int_type, x)
    magnitude = bits & tirx.const((1 << sign_bit) - 1, int_type)
    infinite = magnitude == tirx.const(exponent, int_type)
    below = bits < tirx.const(0, int_type)  # the sign bit
    if float(negative.value) and float(positive.value):
        return _mask(infinite, x)
    if float(negative.value):
        return _mask(infinite & below, x)
    if float(positive.value):
        return _mask(infinite & tirx.Not(below), x)
    return _const(0.0, x)


def where(condition, x, y):
    """``x`` where ``condition`` is not 0, else ``y``."""
    return tirx.Select(_true(condition), x, y)


# Kind name -> formula, merged into the family's ``FORMULAS``.
FORMULAS = {
    "sqrt": sqrt, "abs": abs_, "sign": sign, "floor": floor, "ceil": ceil, "round": round_,
    "sin": sin, "cos": cos, "atan": atan, "asinh": asinh,
    "erf": erf, "softplus": softplus, "pow_const": pow_const,
    "pow": pow_, "clip": clip, "clip_gradient": clip_gradient, "leaky_relu": leaky_relu,
    "leaky_relu_gradient": leaky_relu_gradient, "prelu": prelu, "elu": elu,
    "elu_gradient": elu_gradient, "elu_second": elu_second, "hard_swish": hard_swish,
    "hard_swish_gradient": hard_swish_gradient, "hard_swish_second": hard_swish_second,
    "equal": equal, "less": less, "greater": greater, "less_equal": less_equal,
    "greater_equal": greater_equal, "logical_and": logical_and, "logical_or": logical_or,
    "logical_xor": logical_xor, "logical_not": logical_not, "is_nan": is_nan,
    "is_inf": is_inf, "where": where,
}
