"""ONNX's integer and narrow-float semantics on dlsys's floating-point values (see
``ops_math``): an integer Div's truncation, Mod, BitShift, and the Casts to integers and to
the narrow floats.

dlsys holds integers as floats (exact up to 2**24 in float32, 2**53 in float64) and the
narrow floats (float16, bfloat16, float8, float4) in float32. Which ONNX semantics a node
takes is read from its operands' ONNX types (``Context.input_dtype``): Div of integers
truncates toward zero, Mod takes the divisor's sign (``fmod=0``) or the dividend's, and
BitShift multiplies or floor-divides by powers of two. Each is exact: the quotient of two
integers below 2**53, correctly rounded, is never rounded across a whole number, so its
floor or truncation is the integer quotient's.
"""

from __future__ import annotations

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter
from dlsys.onnx.ops_math import _all_constant, _node_operands, _number, constant_node
from dlsys.ops import div_op
from dlsys.ops.activations import abs_op, floor_op, pow_op, sign_op
from dlsys.ops.cast import (
    SMALL_FLOAT_TYPES,
    as_float_op,
    round_bfloat16_op,
    round_float16_op,
    round_small_float_op,
)

# ----------------------------------------------------------- integer semantics
_INTEGER_OPERATIONS = {"Div": "division", "Mod": "remainder", "BitShift": "shift"}


def is_integer_node(ctx: Context, values) -> bool:
    """Whether the node computes on integers: ONNX types its operands alike, so any input
    whose type is known tells (a constant's own, a tensor's as ONNX's inference found it).
    Operands of an integer and a float type, which ONNX's checker lets through and its type
    inference would not, are refused: the node's semantics (truncating or not) are unknown."""
    kinds = {}
    for i, value in enumerate(values):
        dtype = None if value is None else ctx.input_dtype(i, value)
        if dtype is not None:
            kinds.setdefault(dtype.kind in "iu", (i, dtype))
    if len(kinds) > 1:
        i, dtype = kinds[True]
        what = "a constant" if isinstance(values[i], np.ndarray) else "a tensor"
        operation = _INTEGER_OPERATIONS.get(ctx.node.op_type, ctx.node.op_type)
        raise ctx.refuse(f"input {i} ({ctx.node.input[i]!r}) is {what} of type {dtype}: an "
                         f"integer {operation} of {kinds[False][1]} values is not defined; "
                         f"ONNX types the operands alike")
    if not kinds:  # no input's type known: the output's, typed alike, tells
        output = ctx.dtypes.get(ctx.node.output[0])
        return output is not None and output.kind in "iu"
    return next(iter(kinds))


def truncated(x: Node) -> Node:
    """``x`` rounded toward zero (C's and ONNX's integer conversion): sign(x) floor(|x|)."""
    return sign_op(x) * floor_op(abs_op(x))


@converter("Mod", attrs=("fmod",))
def modulo(ctx: Context, a, b):
    """The remainder: ``fmod=1`` takes the dividend's sign, as C's ``fmod``; ``fmod=0``
    (integers only) the divisor's, as Python's ``%``. Constants the file fixes fold (the
    shape arithmetic of a function's body); integer tensors computed at run time take
    ``a - b * q`` with q the quotient truncated or floored, exact below 2**53 (``b * q`` is
    no larger than ``a``). A floating-point remainder of a run-time tensor, which that
    formula would round, is refused."""
    fmod = bool(ctx.attr("fmod", 0))
    if _all_constant((a, b)):
        if fmod:
            return np.asarray(np.fmod(a, b)).astype(np.result_type(a, b))
        if not np.issubdtype(np.result_type(a, b), np.integer):
            raise ctx.refuse("fmod=0 on floating-point values is not defined by ONNX; set "
                             "fmod=1")
        return np.asarray(np.mod(a, b)).astype(np.result_type(a, b))
    if not is_integer_node(ctx, (a, b)):
        raise ctx.refuse("Mod of floating-point tensors computed at run time is not "
                         "supported (dlsys computes integer remainders exactly, and folds "
                         "constants of the file)")
    a, b = _node_operands(ctx, (a, b))
    quotient = div_op(a, b)
    whole = truncated(quotient) if fmod else floor_op(quotient)
    return a - b * whole


@converter("BitShift", attrs=("direction",))
def bit_shift(ctx: Context, x, shift):
    """ONNX's shifts of unsigned integers: ``x * 2**shift`` to the left, ``x`` floor-divided
    by ``2**shift`` to the right, exact in floating point (a product by a power of two; the
    session refuses an output past its type, where onnxruntime would drop the high bits)."""
    direction = ctx.attr("direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise ctx.refuse(f"direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    if _all_constant((x, shift)):
        shifted = np.left_shift(x, shift) if direction == "LEFT" else np.right_shift(x, shift)
        return np.asarray(shifted).astype(np.result_type(x, shift))
    if isinstance(shift, np.ndarray):
        if shift.size and int(shift.max()) > 63:
            raise ctx.refuse(f"a shift by {int(shift.max())} bits, past 63")
        scale = np.asarray(np.exp2(shift.astype(np.float64)))
        number = _number(scale)
        x = ctx.node_input(0, x)
        if number is not None:
            return x * number if direction == "LEFT" else floor_op(x * (1.0 / number))
        scale = constant_node(ctx, scale, 1)
    else:
        # 2**shift as pow(2, shift), exact for whole exponents (a power of two).
        two = constant_node(ctx, np.asarray(2.0), 0)
        scale = pow_op(two, shift)
        x = x if isinstance(x, Node) else constant_node(ctx, x, 0)
    return x * scale if direction == "LEFT" else floor_op(x / scale)


# ---------------------------------------------------------------------- casts
def narrow_cast(ctx: Context, x: Node, to: np.dtype) -> Node:
    """A Cast of computed values to a narrow float type: dlsys holds them in the model's
    own type, rounded to the narrow type's nearest value (ties to even; float8 saturated
    unless ``saturate=0``), so that what follows reads the numbers onnxruntime's would."""
    if ctx.input_dtype(0, x) == to:
        return x
    x = as_float_op(x) if is_fed_input(x) else x
    name = np.dtype(to).name
    rounding = {"float16": round_float16_op, "bfloat16": round_bfloat16_op}.get(name)
    if rounding is not None:
        return rounding(x)
    if name not in SMALL_FLOAT_TYPES:
        raise ctx.refuse(f"a cast of computed values to {name}; dlsys rounds computed values "
                         f"to float16, bfloat16, {', '.join(SMALL_FLOAT_TYPES)} only")
    # ONNX saturates float8 casts by default (to the largest finite value).
    return round_small_float_op(x, name, bool(ctx.attr("saturate", 1)))


def integer_cast(ctx: Context, x: Node) -> Node:
    """A Cast of computed values to an integer type: a float value truncated toward zero
    (as C and onnxruntime convert), an integer or bool one kept (the session refuses an
    output outside its declared type rather than wrap it). Integer ids fed to the graph
    stay the ids they are fed as."""
    source = ctx.input_dtype(0, x)
    if source is not None and source.kind in "biu" or source is None and is_fed_input(x):
        return x
    return truncated(x)


def is_fed_input(x: Node) -> bool:
    """Whether ``x`` is an input fed to the graph, through reshapes at most."""
    while x.op.keeps_dtype and x.inputs and not x.op.is_placeholder:
        x = x.inputs[0]
    return x.op.is_placeholder and not x.op.holds_value
