"""Rounding to the narrow floating-point types (float16, bfloat16, the float8 and float4
types) without leaving the kernel's type: ONNX's Cast to one of them inside a graph, which
dlsys computes in float32 or float64 (``dlsys.ops.cast``). Each formula gives the narrow
value nearest its input, ties to even, widened back exactly (every such value is a float32
value).
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


# The 8- and 4-bit floats by ml_dtypes' name: (stored significand bits, exponent of the
# smallest normal number, largest finite value, what an overflow gives unless saturated:
# "inf", "nan", or "saturate" for a type with neither, and whether the type has a -0).
FORMATS = {
    "float8_e4m3fn": (3, -6, 448.0, "nan", True),
    "float8_e4m3fnuz": (3, -7, 240.0, "nan", False),
    "float8_e5m2": (2, -14, 57344.0, "inf", True),
    "float8_e5m2fnuz": (2, -15, 57344.0, "nan", False),
    "float4_e2m1fn": (1, 0, 6.0, "saturate", True),
}


def round_to_format(name: str, saturate: bool, x):
    """``x`` rounded to the nearest value of the small float type ``name`` (``FORMATS``),
    ties to even, in ``x``'s type. ``saturate`` (ONNX's Cast attribute) clamps to the
    largest finite value first, infinities included; otherwise an overflow is infinity or
    NaN as the type has. NaN stays NaN; a type without -0 gives +0 for it."""
    bits_stored, min_exponent, largest, overflow, negative_zero = FORMATS[name]
    dtype = fastmath.dtype_of(x)
    uint, stored = ("uint32", 23) if dtype == "float32" else ("uint64", 52)

    def const(value):
        return tirx.const(value, dtype)

    if saturate or overflow == "saturate":
        # Comparisons with NaN fail, so NaN passes through unclamped.
        x = tirx.Select(x > const(largest), const(largest),
                        tirx.Select(x < const(-largest), const(-largest), x))
    dropped = stored - bits_stored
    bits = tirx.reinterpret(uint, x)
    odd = (bits >> tirx.const(dropped, uint)) & tirx.const(1, uint)
    half = tirx.const((1 << (dropped - 1)) - 1, uint)
    keep = tirx.const(~((1 << dropped) - 1) & ((1 << (8 * (4 if uint == "uint32" else 8))) - 1),
                      uint)
    normal = tirx.reinterpret(dtype, (bits + half + odd) & keep)
    # Below the smallest normal number the spacing is fixed: nearbyint rounds ties to even,
    # and the scalings by powers of two are exact.
    step = const(2.0 ** (min_exponent - bits_stored))
    subnormal = tirx.nearbyint(x / step) * step
    rounded = tirx.Select(tirx.abs(x) < const(2.0 ** min_exponent), subnormal, normal)
    if overflow == "inf":
        too_large = tirx.Select(x > const(0.0), const(float("inf")), const(float("-inf")))
    else:
        too_large = const(float("nan"))
    rounded = tirx.Select(tirx.abs(rounded) > const(largest), too_large, rounded)
    if not negative_zero:
        rounded = tirx.Select(rounded == const(0.0), const(0.0), rounded)
    return tirx.Select(x != x, x, rounded)


# Kind name -> formula, merged into the family's ``FORMULAS``: the float8 and float4 kinds
# are ``round_<type>`` and ``round_<type>_saturate``.
def _format_rounding(name: str, saturate: bool):
    """``round_to_format`` for one type as a formula of ``x`` alone, named after its kind
    (the kernel takes its name)."""
    def formula(x):
        return round_to_format(name, saturate, x)

    formula.__name__ = f"round_{name}{'_saturate' * saturate}"
    return formula


FORMULAS = {"round_float16": round_float16, "round_bfloat16": round_bfloat16,
            **{f"round_{name}{'_saturate' * saturate}": _format_rounding(name, saturate)
               for name in FORMATS for saturate in (False, True)}}
