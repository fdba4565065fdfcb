"""Rounding to the narrow floating-point types (float16, bfloat16) without leaving the
kernel's type: ONNX's Cast to one of them inside a graph, which dlsys computes in float32
or float64 (``dlsys.ops.cast``). Each formula gives the narrow value nearest its input, ties
to even, widened back exactly (every float16 and bfloat16 value is a float32 value).
"""

from __future__ import annotations

from tvm import tirx

from dlsys.kernels.elementwise import fastmath

# bfloat16 keeps float32's top 16 bits: rounding adds half the dropped part's range, less
# one unless the kept part's last bit is odd (ties to even), then drops the low 16 bits.
_BF16_DROPPED_BITS = 16
# bfloat16 has float32's exponent range and an 8-bit significand: its spacing at the
# smallest exponents (subnormals below 2**-126) is 2**-133.
_BF16_SMALLEST_NORMAL, _BF16_SUBNORMAL_STEP = 2.0 ** -126, 2.0 ** -133
_BF16_MAX = (2 - 2 ** -7) * 2.0 ** 127
# float64 significand bits beyond bfloat16's 7 stored ones.
_F64_DROPPED_BITS = 52 - 7


def round_float16(x):
    """``x`` rounded to the nearest float16 (LLVM's conversion: ties to even, overflow to
    infinity, NaN kept), in ``x``'s type."""
    return x.astype("float16").astype(fastmath.dtype_of(x))


def round_bfloat16(x):
    """``x`` rounded to the nearest bfloat16, ties to even, in ``x``'s type: the float32 bit
    pattern rounded at bit 16 (NaN passed through, since rounding a NaN's payload may carry
    into the exponent and make an infinity); float64 rounded at its 45th bit below the
    significand's top, with bfloat16's subnormal spacing and overflow applied by hand."""
    dtype = fastmath.dtype_of(x)
    if dtype == "float32":
        bits = tirx.reinterpret("uint32", x)
        one = tirx.const(1, "uint32")
        odd = (bits >> tirx.const(_BF16_DROPPED_BITS, "uint32")) & one
        rounded = (bits + tirx.const(0x7FFF, "uint32") + odd) & tirx.const(0xFFFF0000, "uint32")
        return tirx.Select(x != x, x, tirx.reinterpret("float32", rounded))
    bits = tirx.reinterpret("uint64", x)
    one = tirx.const(1, "uint64")
    odd = (bits >> tirx.const(_F64_DROPPED_BITS, "uint64")) & one
    half = tirx.const((1 << (_F64_DROPPED_BITS - 1)) - 1, "uint64")
    mask = tirx.const(~((1 << _F64_DROPPED_BITS) - 1) & 0xFFFFFFFFFFFFFFFF, "uint64")
    normal = tirx.reinterpret("float64", (bits + half + odd) & mask)
    step = tirx.const(_BF16_SUBNORMAL_STEP, "float64")
    # Below the smallest normal number the spacing is fixed: nearbyint rounds ties to even,
    # and the scalings by powers of two are exact.
    subnormal = tirx.nearbyint(x / step) * step
    magnitude = tirx.abs(x)
    infinity = tirx.const(float("inf"), "float64")
    # Past the largest bfloat16 by half a spacing or more, the rounded value is 2**128.
    overflowed = tirx.Select(x > tirx.const(0.0, "float64"), infinity, -infinity)
    return tirx.Select(
        x != x, x, tirx.Select(
            magnitude < tirx.const(_BF16_SMALLEST_NORMAL, "float64"), subnormal,
            tirx.Select(tirx.abs(normal) > tirx.const(_BF16_MAX, "float64"), overflowed,
                        normal)))


# Kind name -> formula, merged into the family's ``FORMULAS``.
FORMULAS = {"round_float16": round_float16, "round_bfloat16": round_bfloat16}
