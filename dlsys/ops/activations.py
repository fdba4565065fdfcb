"""Elementwise math functions, activations, comparisons and selection, as ONNX models use
them: one class per operator, as in ``dlsys.ops.elementwise`` (whose ``ElementwiseOp``
traits they declare), each formula in ``dlsys.kernels.elementwise.activations``.

A piecewise activation's adjoint is an operator of its own (``ClipGradient``,
``LeakyReluGradient``...), linear in the upstream gradient, so that a fine-tuning step
computes it in one kernel; smooth functions build their adjoints from the operators here
and in ``elementwise``. Comparisons and logical operators give a float mask, 1.0 where
true and 0.0 where false, and read a condition as true where it is not 0; they and the
rounding functions have no gradient (zero almost everywhere), and ``where`` passes its
gradient to the branch each element came from.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.checks import check_constant
from dlsys.errors import ArgumentError, ShapeError
from dlsys.graph import Node, short_name
from dlsys.ops.elementwise import (
    AddByConstOp,
    BroadcastBinaryOp,
    ElementwiseOp,
    exp_op,
    log_op,
    neg_op,
    relu_gradient_op,
    sigmoid_op,
    zeroslike_op,
)
from dlsys.ops.reduce import broadcastto_op, reducesumto_op
from dlsys.ops.shapes import apply_rule, broadcast_shape, same_shape


# -------------------------------------------------------------- math functions
class SqrtOp(ElementwiseOp, name="Sqrt", kernel_kind="sqrt", formula=np.sqrt,
             positive_inputs=(0,)):
    def gradient(self, node, output_grad):
        return [output_grad / node * 0.5]  # sqrt' = 1 / (2 sqrt), read from the output


class AbsOp(ElementwiseOp, name="Abs", kernel_kind="abs", formula=np.abs):
    def gradient(self, node, output_grad):
        return [output_grad * sign_op(node.inputs[0])]


class PiecewiseConstantOp(ElementwiseOp):
    """A function constant between its jumps (sign, floor, ceil, round, the unary masks):
    its gradient is 0 wherever it has one, so no gradient flows through it."""

    def gradient(self, node, output_grad):
        return [None]


class SignOp(PiecewiseConstantOp, name="Sign", kernel_kind="sign", formula=np.sign):
    pass


class FloorOp(PiecewiseConstantOp, name="Floor", kernel_kind="floor", formula=np.floor):
    pass


class CeilOp(PiecewiseConstantOp, name="Ceil", kernel_kind="ceil", formula=np.ceil):
    pass


class RoundOp(PiecewiseConstantOp, name="Round", kernel_kind="round", formula=np.round):
    """Halves round to even, as in numpy and ONNX."""


class SinOp(ElementwiseOp, name="Sin", kernel_kind="sin", formula=np.sin):
    def gradient(self, node, output_grad):
        return [output_grad * cos_op(node.inputs[0])]


class CosOp(ElementwiseOp, name="Cos", kernel_kind="cos", formula=np.cos):
    def gradient(self, node, output_grad):
        return [neg_op(output_grad * sin_op(node.inputs[0]))]


class AtanOp(ElementwiseOp, name="Atan", kernel_kind="atan", formula=np.arctan):
    """The arc tangent (ONNX's Asin and Acos are built on it)."""

    def gradient(self, node, output_grad):
        x = node.inputs[0]
        return [output_grad / (x * x + 1.0)]


class AsinhOp(ElementwiseOp, name="Asinh", kernel_kind="asinh", formula=np.arcsinh):
    """The inverse hyperbolic sine (ONNX's Atanh is built on it)."""

    def gradient(self, node, output_grad):
        x = node.inputs[0]
        return [output_grad / sqrt_op(x * x + 1.0)]


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.asarray(x).dtype])(x)


class ErfOp(ElementwiseOp, name="Erf", kernel_kind="erf", formula=_erf):
    """The error function, ``2 / sqrt(pi) * integral of exp(-t**2) from 0 to x``."""

    def gradient(self, node, output_grad):
        x = node.inputs[0]
        return [output_grad * exp_op(x * x * -1.0) * (2 / math.sqrt(math.pi))]


class SoftplusOp(ElementwiseOp, name="Softplus", kernel_kind="softplus"):
    """``log(1 + exp(x))``."""

    def gradient(self, node, output_grad):
        return [output_grad * sigmoid_op(node.inputs[0])]

    def reference(self, node, x):
        return np.logaddexp(0, x)


class PowByConstOp(AddByConstOp, name="PowByConst", kernel_kind="pow_const", symbol="**",
                   formula=np.power, positive_inputs=(0,)):
    """``a ** c`` for a number ``c`` (NaN for a negative ``a`` and a fractional ``c``)."""

    def example(self, inputs):
        return self(inputs[0], 2.5)

    def gradient(self, node, output_grad):
        x, c = node.inputs[0], node.attrs["const"]
        if c == 0:
            return [None]
        if c == 1:
            return [output_grad]
        # c x**(c - 1); for a square that is 2 x, with no power at all.
        return [output_grad * (x if c == 2 else pow_byconst_op(x, c - 1)) * c]


class PowOp(BroadcastBinaryOp, name="Pow", kernel_kind="pow", symbol="**", formula=np.power,
            positive_inputs=(0,)):
    """``a ** b`` with numpy broadcasting."""

    def gradient(self, node, output_grad):
        a, b = node.inputs
        # d/da = b a**(b - 1), kept a power (a**b / a would be 0 / 0 at a = 0);
        # d/db = a**b log(a), read from the output.
        return [reducesumto_op(output_grad * b * pow_op(a, b - 1.0), a),
                reducesumto_op(output_grad * node * log_op(a), b)]


# ----------------------------------------------------------------- activations
def _number(op: ElementwiseOp, x: Node, what: str, value) -> float:
    """``value`` as an operator's constant: a finite number a float32 kernel can hold."""
    return check_constant(f"{op.name}({x.name}, ...): {what}", value)


def _bound(op: ElementwiseOp, x: Node, what: str, value) -> float:
    """A clip bound: a number (not NaN), or None for no bound (as infinity)."""
    if value is None:
        return math.inf if what == "high" else -math.inf
    number = float(value)
    if math.isnan(number):
        raise ArgumentError(f"{op.name}({x.name}, ...): the {what} bound is NaN")
    return number


class AdjointOp(ElementwiseOp):
    """``f'(x) * g`` (or ``f''(x) * g``): a piecewise activation's adjoint at its input
    ``x``, linear in the upstream gradient ``g``, whose buffer it may take. The node's
    attributes ``constant_names`` are the activation's constants, in its formula's order."""

    arity = 2
    inplace_input = 1
    constant_names: tuple[str, ...] = ()

    def constants(self, node):
        return tuple(node.attrs[name] for name in self.constant_names)

    def infer_shape(self, node, input_shapes):
        return same_shape(node, input_shapes)


class ClipOp(ElementwiseOp, name="Clip", kernel_kind="clip"):
    """``x`` limited to ``[low, high]`` (None: unbounded on that side); a ``low`` above
    ``high`` gives ``high`` everywhere, as ONNX's Clip."""

    def __call__(self, x: Node, low: float | None = None, high: float | None = None) -> Node:
        (x,) = self.check_inputs((x,))
        return Node(self, [x], {"low": _bound(self, x, "low", low),
                                "high": _bound(self, x, "high", high)})

    def example(self, inputs):
        return self(inputs[0], -0.5, 0.75)

    def constants(self, node):
        return node.attrs["low"], node.attrs["high"]

    def describe(self, node):
        return f"Clip({short_name(node.inputs[0])}, {node.attrs['low']:g}, " \
               f"{node.attrs['high']:g})"

    def gradient(self, node, output_grad):
        return [clip_gradient_op(node.inputs[0], output_grad, *self.constants(node))]

    def reference(self, node, x):
        return np.minimum(np.maximum(x, node.attrs["low"]), node.attrs["high"])


class ClipGradientOp(AdjointOp, name="ClipGradient", kernel_kind="clip_gradient"):
    """``g`` where ``low <= x <= high``, else 0: the adjoint of clip at its input ``x`` (as
    PyTorch's clamp, both bounds included)."""

    constant_names = ("low", "high")

    def __call__(self, x: Node, g: Node, low: float | None = None,
                 high: float | None = None) -> Node:
        x, g = self.check_inputs((x, g))
        return Node(self, [x, g], {"low": _bound(self, x, "low", low),
                                   "high": _bound(self, x, "high", high)})

    def example(self, inputs):
        return self(inputs[0], inputs[1], -0.5, 0.75)

    def gradient(self, node, output_grad):
        # Zero almost everywhere in x; linear in g with the same mask.
        return [None, clip_gradient_op(node.inputs[0], output_grad, *self.constants(node))]

    def reference(self, node, x, g):
        return np.where((x >= node.attrs["low"]) & (x <= node.attrs["high"]), g, 0.0)


class LeakyReluOp(AddByConstOp, name="LeakyRelu", kernel_kind="leaky_relu"):
    """``x`` above 0, ``alpha * x`` elsewhere."""

    def example(self, inputs):
        return self(inputs[0], 0.1)

    def describe(self, node):
        return f"LeakyRelu({short_name(node.inputs[0])}, {node.attrs['const']:g})"

    def gradient(self, node, output_grad):
        return [leaky_relu_gradient_op(node.inputs[0], output_grad, node.attrs["const"])]

    def reference(self, node, x):
        return np.where(x > 0, x, node.attrs["const"] * x)


class LeakyReluGradientOp(AdjointOp, name="LeakyReluGradient",
                          kernel_kind="leaky_relu_gradient"):
    """``g`` where ``x > 0``, else ``alpha * g``: the adjoint of leaky relu at ``x``."""

    constant_names = ("const",)

    def __call__(self, x: Node, g: Node, alpha: float) -> Node:
        x, g = self.check_inputs((x, g))
        return Node(self, [x, g], {"const": _number(self, x, "alpha", alpha)})

    def example(self, inputs):
        return self(inputs[0], inputs[1], 0.1)

    def gradient(self, node, output_grad):
        return [None, leaky_relu_gradient_op(node.inputs[0], output_grad, node.attrs["const"])]

    def reference(self, node, x, g):
        return np.where(x > 0, g, node.attrs["const"] * g)


class PReluOp(BroadcastBinaryOp, name="PRelu", kernel_kind="prelu", symbol=" prelu "):
    """``x`` above 0, ``slope * x`` elsewhere, ``slope`` broadcast (one per channel)."""

    def describe(self, node):
        return f"PRelu({short_name(node.inputs[0])}, {short_name(node.inputs[1])})"

    def gradient(self, node, output_grad):
        x, slope = node.inputs
        # The upstream gradient where x > 0 and where x < 0: relu masks, no new kernel kind,
        # over x broadcast to the output's shape (a view where x has it already).
        x = broadcastto_op(x, node)
        below = relu_gradient_op(neg_op(x), output_grad)
        return [reducesumto_op(relu_gradient_op(x, output_grad) + below * slope, node.inputs[0]),
                reducesumto_op(below * x, slope)]

    def reference(self, node, x, slope):
        return np.where(x > 0, x, slope * x)


class EluOp(ElementwiseOp, name="Elu", kernel_kind="elu"):
    """``scale * x`` above 0, ``scale * alpha * (exp(x) - 1)`` elsewhere: ELU (scale 1) and
    SELU (ONNX's alpha and gamma as ``alpha`` and ``scale``)."""

    def __call__(self, x: Node, alpha: float = 1.0, scale: float = 1.0) -> Node:
        (x,) = self.check_inputs((x,))
        return Node(self, [x], {"alpha": _number(self, x, "alpha", alpha),
                                "scale": _number(self, x, "scale", scale)})

    def example(self, inputs):
        return self(inputs[0], 0.7, 1.25)

    def constants(self, node):
        return node.attrs["alpha"], node.attrs["scale"]

    def gradient(self, node, output_grad):
        return [elu_gradient_op(node.inputs[0], output_grad, *self.constants(node))]

    def reference(self, node, x):
        alpha, scale = self.constants(node)
        return np.where(x > 0, scale * x, scale * alpha * (np.exp(np.minimum(x, 0)) - 1))


class EluGradientOp(AdjointOp, name="EluGradient", kernel_kind="elu_gradient"):
    """``elu'(x) * g`` (``derivative`` 1) or ``elu''(x) * g`` (``derivative`` 2). Below 0
    both are ``scale * alpha * exp(x) * g``, so the second derivative is its own."""

    constant_names = ("alpha", "scale")

    def __call__(self, x: Node, g: Node, alpha: float = 1.0, scale: float = 1.0,
                 derivative: int = 1) -> Node:
        x, g = self.check_inputs((x, g))
        return Node(self, [x, g], {"alpha": alpha, "scale": scale, "derivative": derivative})

    def example(self, inputs):
        return self(inputs[0], inputs[1], 0.7, 1.25)

    def node_kind(self, node):
        return "elu_gradient" if node.attrs["derivative"] == 1 else "elu_second"

    def gradient(self, node, output_grad):
        x, g = node.inputs
        constants = self.constants(node)
        return [elu_gradient_op(x, g * output_grad, *constants, 2),
                elu_gradient_op(x, output_grad, *constants, node.attrs["derivative"])]

    def reference(self, node, x, g):
        alpha, scale = self.constants(node)
        above = scale if node.attrs["derivative"] == 1 else 0.0
        return np.where(x > 0, above, scale * alpha * np.exp(np.minimum(x, 0))) * g


class HardSwishOp(ElementwiseOp, name="HardSwish", kernel_kind="hard_swish"):
    """``x * clip(x / 6 + 1 / 2, 0, 1)`` (MobileNetV3's activation)."""

    def gradient(self, node, output_grad):
        return [hard_swish_gradient_op(node.inputs[0], output_grad)]

    def reference(self, node, x):
        return x * np.clip(x / 6 + 0.5, 0, 1)


class HardSwishGradientOp(AdjointOp, name="HardSwishGradient",
                          kernel_kind="hard_swish_gradient"):
    """``hard_swish'(x) * g`` (``derivative`` 1: 0 below -3, ``x / 3 + 1 / 2`` up to 3,
    then 1) or ``hard_swish''(x) * g`` (``derivative`` 2: 1/3 between -3 and 3)."""

    def __call__(self, x: Node, g: Node, derivative: int = 1) -> Node:
        x, g = self.check_inputs((x, g))
        return Node(self, [x, g], {"derivative": derivative})

    def node_kind(self, node):
        return "hard_swish_gradient" if node.attrs["derivative"] == 1 else "hard_swish_second"

    def gradient(self, node, output_grad):
        x, g = node.inputs
        if node.attrs["derivative"] == 1:
            return [hard_swish_gradient_op(x, g * output_grad, 2),
                    hard_swish_gradient_op(x, output_grad)]
        return [None, hard_swish_gradient_op(x, output_grad, 2)]

    def reference(self, node, x, g):
        if node.attrs["derivative"] == 2:
            return np.where((x > -3) & (x < 3), g / 3, 0.0)
        return np.where(x < -3, 0.0, np.where(x <= 3, x / 3 + 0.5, 1.0)) * g


# ---------------------------------------------------------- comparison, logic
class MaskOp(BroadcastBinaryOp):
    """A comparison or a logical operator of two broadcast inputs: 1.0 where it holds, else
    0.0. Each is an instance, named by ONNX's op type; no gradient flows through a mask."""

    def __init__(self, name: str, kernel_kind: str, symbol: str, test):
        self.name, self.kernel_kind, self.symbol = name, kernel_kind, symbol
        self.test = test

    def gradient(self, node, output_grad):
        return [None, None]

    def reference(self, node, a, b):
        return self.test(a, b).astype(np.result_type(a, b))


class NotOp(PiecewiseConstantOp, name="Not", kernel_kind="logical_not"):
    """1.0 where ``x`` is 0, else 0.0."""

    def reference(self, node, x):
        return (x == 0).astype(x.dtype)


class IsNanOp(PiecewiseConstantOp, name="IsNaN", kernel_kind="is_nan"):
    """1.0 where ``x`` is NaN, else 0.0."""

    def reference(self, node, x):
        return np.isnan(x).astype(x.dtype)


class IsInfOp(PiecewiseConstantOp, name="IsInf", kernel_kind="is_inf"):
    """1.0 where ``x`` is -inf (if ``negative``) or inf (if ``positive``), else 0.0."""

    def __call__(self, x: Node, negative: bool = True, positive: bool = True) -> Node:
        (x,) = self.check_inputs((x,))
        return Node(self, [x], {"negative": bool(negative), "positive": bool(positive)})

    def constants(self, node):
        return float(node.attrs["negative"]), float(node.attrs["positive"])

    def reference(self, node, x):
        found = (np.isneginf(x) & node.attrs["negative"]) | (np.isposinf(x)
                                                            & node.attrs["positive"])
        return found.astype(x.dtype)


class WhereOp(ElementwiseOp, name="Where", kernel_kind="where", arity=3):
    """``where_op(condition, a, b)``: ``a`` where ``condition`` is not 0 (NaN included, as
    a cast to bool takes it), else ``b``, the three broadcast as in numpy."""

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, _broadcast_three, *input_shapes)

    def gradient(self, node, output_grad):
        condition, a, b = node.inputs
        # Selected rather than multiplied by the mask, so that a condition of any nonzero
        # value (a number cast to bool) routes the gradient as it routed the values.
        zeros = zeroslike_op(output_grad)
        return [None, reducesumto_op(where_op(condition, output_grad, zeros), a),
                reducesumto_op(where_op(condition, zeros, output_grad), b)]

    def reference(self, node, condition, a, b):
        return np.where(condition != 0, a, b)


def _broadcast_three(shape_c, shape_a, shape_b):
    """Numpy's broadcast of Where's three shapes."""
    out = broadcast_shape(shape_c, shape_a)
    out = None if out is None else broadcast_shape(out, shape_b)
    if out is None:
        raise ShapeError("shapes do not broadcast")
    return out


sqrt_op = SqrtOp()
abs_op = AbsOp()
sign_op = SignOp()
floor_op = FloorOp()
ceil_op = CeilOp()
round_op = RoundOp()
sin_op = SinOp()
cos_op = CosOp()
atan_op = AtanOp()
asinh_op = AsinhOp()
erf_op = ErfOp()
softplus_op = SoftplusOp()
pow_byconst_op = PowByConstOp()
pow_op = PowOp()
clip_op = ClipOp()
clip_gradient_op = ClipGradientOp()
leaky_relu_op = LeakyReluOp()
leaky_relu_gradient_op = LeakyReluGradientOp()
prelu_op = PReluOp()
elu_op = EluOp()
elu_gradient_op = EluGradientOp()
hard_swish_op = HardSwishOp()
hard_swish_gradient_op = HardSwishGradientOp()
equal_op = MaskOp("Equal", "equal", "==", np.equal)
less_op = MaskOp("Less", "less", "<", np.less)
greater_op = MaskOp("Greater", "greater", ">", np.greater)
less_equal_op = MaskOp("LessOrEqual", "less_equal", "<=", np.less_equal)
greater_equal_op = MaskOp("GreaterOrEqual", "greater_equal", ">=", np.greater_equal)
logical_and_op = MaskOp("And", "logical_and", " and ",
                        lambda a, b: np.logical_and(a != 0, b != 0))
logical_or_op = MaskOp("Or", "logical_or", " or ", lambda a, b: np.logical_or(a != 0, b != 0))
logical_xor_op = MaskOp("Xor", "logical_xor", " xor ",
                        lambda a, b: np.logical_xor(a != 0, b != 0))
logical_not_op = NotOp()
is_nan_op = IsNanOp()
is_inf_op = IsInfOp()
where_op = WhereOp()

ACTIVATION_OPS = [
    sqrt_op, abs_op, sign_op, floor_op, ceil_op, round_op, sin_op, cos_op, atan_op, asinh_op,
    erf_op, softplus_op, pow_byconst_op, pow_op, clip_op, clip_gradient_op, leaky_relu_op,
    leaky_relu_gradient_op, prelu_op, elu_op, elu_gradient_op, hard_swish_op,
    hard_swish_gradient_op, equal_op, less_op, greater_op, less_equal_op, greater_equal_op,
    logical_and_op, logical_or_op, logical_xor_op, logical_not_op, is_nan_op, is_inf_op,
    where_op,
]

__all__ = [
    "ACTIVATION_OPS", "MaskOp", "sqrt_op", "abs_op", "sign_op", "floor_op", "ceil_op",
    "round_op", "sin_op", "cos_op", "atan_op", "asinh_op", "erf_op", "softplus_op",
    "pow_byconst_op", "pow_op", "clip_op", "clip_gradient_op", "leaky_relu_op",
    "leaky_relu_gradient_op", "prelu_op", "elu_op", "elu_gradient_op", "hard_swish_op",
    "hard_swish_gradient_op", "equal_op", "less_op", "greater_op", "less_equal_op",
    "greater_equal_op", "logical_and_op", "logical_or_op", "logical_xor_op", "logical_not_op",
    "is_nan_op", "is_inf_op", "where_op",
]
