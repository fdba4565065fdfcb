"""ONNX's elementwise arithmetic, math functions, activations, comparisons and Where as
dlsys graph nodes (see ``ops``).

Where all of a node's inputs are constants fixed by the file (a Shape's sizes, a Constant),
the converter computes its value in numpy, in the file's types (constant folding: this is how
the shape arithmetic of an exported transformer disappears). Otherwise the model computes in
floating point: a constant operand becomes a number of a by-constant operator, or a constant
graph value (``constant_node``) broadcast as numpy broadcasts.

Comparisons and logical operators compute 1.0 where true and 0.0 where false, and read a
condition (Where's, And's inputs) as true where it is not 0: the session casts an output the
file declares bool back to bool. Integers computed at run time (an ArgMax's index, an
integer graph's inputs) are floats in the graph, as in the rest of dlsys: exact for sums,
products and comparisons of integers up to 2**24 in float32 and 2**53 in float64 (the
session checks integer outputs against those bounds). An integer Div truncates, and Mod and
BitShift follow ONNX's integer semantics: see ``ops_types``.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter
from dlsys.ops import (
    add_op,
    div_op,
    exp_op,
    gelu_op,
    log_op,
    mul_op,
    neg_op,
    relu_gradient_op,
    relu_op,
    sigmoid_op,
    sub_op,
    tanh_op,
)
from dlsys.ops.activations import (
    abs_op,
    asinh_op,
    atan_op,
    ceil_op,
    clip_op,
    cos_op,
    elu_op,
    equal_op,
    erf_op,
    floor_op,
    greater_equal_op,
    greater_op,
    hard_swish_op,
    is_inf_op,
    is_nan_op,
    leaky_relu_op,
    less_equal_op,
    less_op,
    logical_and_op,
    logical_not_op,
    logical_or_op,
    logical_xor_op,
    pow_byconst_op,
    pow_op,
    prelu_op,
    round_op,
    sign_op,
    sin_op,
    softplus_op,
    sqrt_op,
    where_op,
)
from dlsys.ops.elementwise import gelu_reference
from dlsys.ops.placeholder import Parameter


# ------------------------------------------------------------------ constants
def constant_node(ctx: Context, array: np.ndarray, i: int) -> Node:
    """The constant ``array``, input ``i`` of the node, as a graph value that holds it: a
    parameter no module owns, so no optimiser updates it, and the session reads it as a
    constant. A float array keeps its type (the executor converts it to the type it computes
    in); a bool or integer one (a mask) becomes float64 numbers (exact up to 2**53, then
    converted by the executor), a narrow float one float32. dlsys values have an axis: a
    0-d array is held as (1,), which broadcasts alike."""
    array = np.asarray(array)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64 if array.dtype.kind in "biu" else np.float32)
    name = ctx.node.input[i] or f"{ctx.node.output[0]}:input{i}"
    return Parameter(array.reshape(1) if array.ndim == 0 else array, name)


def _all_constant(values) -> bool:
    return all(isinstance(v, np.ndarray) for v in values if v is not None)


# Integers each type a model computes in holds exactly: an integer constant beyond them is
# refused.
EXACT_INTEGER = {"float32": 2 ** 24, "float64": 2 ** 53}


def _check_integer(ctx: Context, i: int, array: np.ndarray) -> None:
    """Refuse an integer constant, input ``i``, beside a tensor computed at run time that a
    float cannot stand in for. ONNX types both operands alike, so that tensor holds integers
    (an ArgMax's index, a cast), which dlsys computes as floats: exact for integers up to
    ``EXACT_INTEGER`` of the model's type."""
    if array.dtype.kind not in "iu" or not array.size:
        return
    limit = EXACT_INTEGER.get(ctx.compute_dtype, EXACT_INTEGER["float32"])
    if max(abs(int(array.min())), abs(int(array.max()))) > limit:
        raise ctx.refuse(f"input {i} ({ctx.node.input[i]!r}) holds integers beyond "
                         f"2**{limit.bit_length() - 1}, which dlsys's {ctx.compute_dtype} "
                         f"values do not hold exactly")


def _node_operands(ctx: Context, values) -> list[Node]:
    """Every operand as a graph node, constants as constant graph values."""
    nodes = []
    for i, value in enumerate(values):
        if isinstance(value, np.ndarray):
            _check_integer(ctx, i, value)
            value = constant_node(ctx, value, i)
        nodes.append(value)
    return nodes


def _number(array: np.ndarray) -> float | None:
    """The finite number ``array`` holds when it is one (shape () or (1,)), else None: a
    by-constant operator's constant (a (1, 1) constant would add an axis to a vector)."""
    if array.size != 1 or array.ndim > 1:
        return None
    number = float(array.reshape(()))
    return number if math.isfinite(number) else None


def _fold(result: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A folded floating-point result in the type of its input, as ONNX types it."""
    return np.asarray(result).astype(like.dtype, copy=False)


# ----------------------------------------------------------------- arithmetic
_BINARY = {"Add": (add_op, np.add), "Sub": (sub_op, np.subtract), "Mul": (mul_op, np.multiply),
           "Div": (div_op, np.divide)}


@converter("Add", "Sub", "Mul", "Div")
def binary(ctx: Context, a, b):
    op, numpy_op = _BINARY[ctx.node.op_type]
    constant_a, constant_b = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    if constant_a and constant_b:
        # Both sides fixed by the file: arithmetic on the file's constants, as ONNX's own
        # constant folding would do, before any graph exists. An integer Div truncates.
        return np.asarray(numpy_op(a, b)).astype(np.result_type(a, b))
    if ctx.node.op_type == "Div" and ops_types.is_integer_node(ctx, (a, b)):
        # The integer quotient: the float quotient truncated (exact, see ``ops_types``).
        return ops_types.truncated(div_op(*_node_operands(ctx, (a, b))))
    if not (constant_a or constant_b):
        return op(a, b)
    constant, node = (a, b) if constant_a else (b, a)
    _check_integer(ctx, 0 if constant_a else 1, constant)
    number = _number(constant)
    if number is None:
        return op(*_node_operands(ctx, (a, b)))
    # Node arithmetic with a number builds dlsys's by-constant operators, each side rounding
    # as the tensor operator would.
    if ctx.node.op_type == "Add":
        return node + number
    if ctx.node.op_type == "Mul":
        return node * number
    if ctx.node.op_type == "Sub":
        return number - node if constant_a else node - number
    return number / node if constant_a else node / number


@converter("Pow", constant_inputs=(1,))
def power(ctx: Context, base, exponent):
    if _all_constant((base, exponent)):
        return np.asarray(np.power(base, exponent)).astype(base.dtype)
    if isinstance(exponent, np.ndarray):
        # The exponent may be of another type than the base (an int64 2): only its value
        # matters. A number is the by-constant operator (x**2 a product, no pow call).
        number = _number(exponent)
        if number is not None:
            return pow_byconst_op(base, number)
        exponent = constant_node(ctx, exponent, 1)
    if isinstance(base, np.ndarray):
        _check_integer(ctx, 0, base)
        base = constant_node(ctx, base, 0)
    return pow_op(base, exponent)


# ------------------------------------------------------------ unary functions
def _softsign(x: Node) -> Node:
    return x / (abs_op(x) + 1.0)


def _mish(x: Node) -> Node:
    return x * tanh_op(softplus_op(x))


def _sinh(x: Node) -> Node:
    return (exp_op(x) - exp_op(neg_op(x))) * 0.5


def _cosh(x: Node) -> Node:
    return (exp_op(x) + exp_op(neg_op(x))) * 0.5


def _asin(x: Node) -> Node:
    # atan(x / sqrt(1 - x**2)), 1 - x**2 as (1 - x)(1 + x), which keeps its digits near 1.
    return atan_op(x / sqrt_op((1.0 - x) * (x + 1.0)))


def _acos(x: Node) -> Node:
    return math.pi / 2 - _asin(x)


def _acosh(x: Node) -> Node:
    # log(x + sqrt(x**2 - 1)) for x >= 1: a sum of positive terms, no cancellation.
    return log_op(x + sqrt_op((x - 1.0) * (x + 1.0)))


def _atanh(x: Node) -> Node:
    # asinh(x / sqrt(1 - x**2)): exact near 0, where 0.5 log((1 + x) / (1 - x)) is not.
    return asinh_op(x / sqrt_op((1.0 - x) * (x + 1.0)))


def _erf(array: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(array)


def _numpy_softplus(x):
    return np.logaddexp(0, x)


def _numpy_hard_swish(x):
    return x * np.clip(x / 6 + 0.5, 0, 1)


# op type -> (the graph's operator, numpy's function for constants)
_UNARY = {
    "Sqrt": (sqrt_op, np.sqrt), "Abs": (abs_op, np.abs), "Neg": (neg_op, np.negative),
    "Exp": (exp_op, np.exp), "Log": (log_op, np.log), "Erf": (erf_op, _erf),
    "Sin": (sin_op, np.sin), "Cos": (cos_op, np.cos),
    "Tan": (lambda x: sin_op(x) / cos_op(x), np.tan), "Atan": (atan_op, np.arctan),
    "Asin": (_asin, np.arcsin), "Acos": (_acos, np.arccos), "Sinh": (_sinh, np.sinh),
    "Cosh": (_cosh, np.cosh), "Asinh": (asinh_op, np.arcsinh), "Acosh": (_acosh, np.arccosh),
    "Atanh": (_atanh, np.arctanh), "Floor": (floor_op, np.floor),
    "Ceil": (ceil_op, np.ceil), "Sign": (sign_op, np.sign), "Round": (round_op, np.round),
    "Reciprocal": (lambda x: 1.0 / x, np.reciprocal),
    "Relu": (relu_op, lambda x: np.maximum(x, 0)),
    "Sigmoid": (sigmoid_op, lambda x: 1 / (1 + np.exp(-x))), "Tanh": (tanh_op, np.tanh),
    "Softplus": (softplus_op, _numpy_softplus),
    "Softsign": (_softsign, lambda x: x / (1 + np.abs(x))),
    "Mish": (_mish, lambda x: x * np.tanh(_numpy_softplus(x))),
    "HardSwish": (hard_swish_op, _numpy_hard_swish),
}


@converter(*_UNARY)
def unary(ctx: Context, x):
    op, numpy_fn = _UNARY[ctx.node.op_type]
    if isinstance(x, np.ndarray):
        with np.errstate(all="ignore"):  # log(0) is -inf, as in the graph
            return _fold(numpy_fn(x), x)
    return op(ctx.node_input(0, x))


@converter("Not")
def logical_not(ctx: Context, x):
    if isinstance(x, np.ndarray):
        return np.asarray(np.logical_not(x))
    return logical_not_op(ctx.node_input(0, x))


@converter("IsNaN")
def is_nan(ctx: Context, x):
    if isinstance(x, np.ndarray):
        return np.asarray(np.isnan(x))
    return is_nan_op(ctx.node_input(0, x))


@converter("IsInf", attrs=("detect_negative", "detect_positive"))
def is_inf(ctx: Context, x):
    negative, positive = bool(ctx.attr("detect_negative", 1)), bool(ctx.attr("detect_positive", 1))
    if isinstance(x, np.ndarray):
        return np.asarray(np.isneginf(x) & negative | np.isposinf(x) & positive)
    return is_inf_op(ctx.node_input(0, x), negative, positive)


# ----------------------------------------------------------------- activations
# op type -> its attributes' defaults, in ONNX's order.
_ACTIVATION_ATTRS = {
    "LeakyRelu": {"alpha": 0.01}, "Elu": {"alpha": 1.0},
    "Selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    "Celu": {"alpha": 1.0}, "HardSigmoid": {"alpha": 0.2, "beta": 0.5},
    "ThresholdedRelu": {"alpha": 1.0}, "Swish": {"alpha": 1.0},
    "Shrink": {"lambd": 0.5, "bias": 0.0},
}


def _activation(op_type: str, x, alpha: float, beta: float = 0.0):
    """The activation on a node or, through the same formulas' numpy forms, on an array
    (``alpha`` and ``beta`` its attributes in ``_ACTIVATION_ATTRS``'s order)."""
    node = isinstance(x, Node)
    if op_type == "LeakyRelu":
        return leaky_relu_op(x, alpha) if node else np.where(x > 0, x, alpha * x)
    if op_type in ("Elu", "Selu", "Celu"):
        scale = beta if op_type == "Selu" else 1.0
        if op_type == "Celu":  # alpha * elu(x / alpha)
            x, scale, alpha = x / alpha, alpha, 1.0
        if node:
            return elu_op(x, alpha, scale)
        return np.where(x > 0, scale * x, scale * alpha * (np.exp(np.minimum(x, 0)) - 1))
    if op_type == "HardSigmoid":
        return clip_op(x * alpha + beta, 0.0, 1.0) if node else np.clip(x * alpha + beta, 0, 1)
    if op_type == "Swish":  # x * sigmoid(alpha * x)
        if node:
            return x * sigmoid_op(x * alpha if alpha != 1 else x)
        return x / (1 + np.exp(-alpha * x))
    if op_type == "Shrink":
        # x - bias above lambd, x + bias below -lambd, 0 between: relu's mask of
        # |x| - lambd applied to x - sign(x) bias.
        if node:
            return relu_gradient_op(abs_op(x) - alpha, x - sign_op(x) * beta if beta else x)
        return np.where(x < -alpha, x + beta, np.where(x > alpha, x - beta, 0))
    # ThresholdedRelu: x where x > alpha, else 0, as relu's mask of x - alpha applied to x.
    if node:
        return relu_gradient_op(x - alpha if alpha else x, x)
    return np.where(x > alpha, x, 0)


@converter(*_ACTIVATION_ATTRS, attrs=("alpha", "beta", "gamma", "lambd", "bias"))
def activation(ctx: Context, x):
    defaults = _ACTIVATION_ATTRS[ctx.node.op_type]
    unknown = sorted(set(ctx.attrs) - set(defaults))
    if unknown:
        raise ctx.refuse(f"attribute(s) {unknown} are not supported; {ctx.node.op_type} "
                         f"takes {sorted(defaults)}")
    values = [float(ctx.attr(name, default)) for name, default in defaults.items()]
    if isinstance(x, np.ndarray):
        return _fold(_activation(ctx.node.op_type, x, *values), x)
    return _activation(ctx.node.op_type, ctx.node_input(0, x), *values)


@converter("Gelu", attrs=("approximate",))
def gelu(ctx: Context, x):
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.refuse(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    if isinstance(x, np.ndarray):
        return _fold(gelu_reference(x.astype(np.float64), approximate), x)
    return gelu_op(ctx.node_input(0, x), approximate)


@converter("Clip", attrs=("min", "max"), constant_inputs=(1, 2))
def clip(ctx: Context, x, low=None, high=None):
    # Before opset 11 the bounds are attributes; from 11 on, optional constant inputs.
    bounds = [ctx.attr("min"), ctx.attr("max")]
    for i, value in ((1, low), (2, high)):
        if value is None:
            continue
        if not isinstance(value, np.ndarray) or value.size != 1:
            raise ctx.refuse(f"input {i} ({ctx.node.input[i]!r}), a bound, must be a constant "
                             f"number (an initializer or a Constant node)")
        bounds[i - 1] = float(value.reshape(()))
    if isinstance(x, np.ndarray):
        low_bound, high_bound = (-np.inf if bounds[0] is None else bounds[0],
                                 np.inf if bounds[1] is None else bounds[1])
        return _fold(np.minimum(np.maximum(x, low_bound), high_bound), x)
    x = ctx.node_input(0, x)
    return x if bounds == [None, None] else clip_op(x, *bounds)


@converter("PRelu")
def prelu(ctx: Context, x, slope):
    if _all_constant((x, slope)):
        return _fold(np.where(x > 0, x, slope * x), x)
    return prelu_op(*_node_operands(ctx, (x, slope)))


# ------------------------------------------------------ comparison and Where
_COMPARISONS = {
    "Equal": (equal_op, np.equal), "Less": (less_op, np.less),
    "Greater": (greater_op, np.greater), "LessOrEqual": (less_equal_op, np.less_equal),
    "GreaterOrEqual": (greater_equal_op, np.greater_equal),
    "And": (logical_and_op, np.logical_and), "Or": (logical_or_op, np.logical_or),
    "Xor": (logical_xor_op, np.logical_xor),
}


@converter(*_COMPARISONS)
def compare(ctx: Context, a, b):
    op, numpy_op = _COMPARISONS[ctx.node.op_type]
    if _all_constant((a, b)):
        return np.asarray(numpy_op(a, b))
    # And, Or and Xor read bools, which a mask of 0.0 and 1.0 holds as well.
    return op(*_node_operands(ctx, (a, b)))


@converter("Where")
def where(ctx: Context, condition, a, b):
    if _all_constant((condition, a, b)):
        return np.asarray(np.where(condition, a, b))
    if isinstance(condition, np.ndarray):
        condition = constant_node(ctx, condition, 0)
    return where_op(condition, _branch(ctx, 1, a), _branch(ctx, 2, b))


def _branch(ctx: Context, i: int, value) -> Node:
    """Where's branch ``i`` as a graph node: a float constant as a constant value."""
    if isinstance(value, np.ndarray):
        _check_integer(ctx, i, value)
        return constant_node(ctx, value, i)
    return value


# ONNX's integer and narrow-float semantics (Mod, BitShift, the helpers of integer Div and
# of the casts) register themselves on import.
from dlsys.onnx import ops_types  # noqa: E402
