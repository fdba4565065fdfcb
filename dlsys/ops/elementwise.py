"""Elementwise operators: each output element from the same element of each input.

Each operator names its formula (``kernel_kind``, a function of
``dlsys.kernels.elementwise.compute`` registered by that family); the standalone kernel and
the epilogue of a fused matmul both apply that formula, so the math is written once. Binary
operators broadcast their inputs as numpy does.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.checks import check_constant
from dlsys.errors import ArgumentError, ArgumentTypeError, GradientError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.common.epilogue import Epilogue, epilogue_from_label
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.reduce import reducesumto_op
from dlsys.ops.shapes import apply_rule, broadcast_shape, same_shape


class ElementwiseOp(Op):
    """An operator computed element by element by the formula ``kernel_kind``.

    ``arity`` is how many tensors it reads; ``constants(node)`` the numbers its formula
    takes after them. ``example(inputs)`` builds a node from ``arity`` nodes for the test
    tables, which pick every elementwise operator up from ``dlsys.ops.ELEMENTWISE_OPS``.
    ``positive_inputs`` are the inputs where the formula is defined and smooth only for
    positive values (log's argument; a divisor, whose pole at 0 is kept out of reach): the
    test tables draw those inputs positive, and nothing else reads it. ``formula``, a numpy
    function of the inputs then the constants, is the numpy reference where one fits.

    A subclass declares these traits in its class line, ``class ExpOp(ElementwiseOp,
    name="Exp", kernel_kind="exp", formula=np.exp)``, and writes below only what is its own
    (the gradient, above all).
    """

    kernel_kind = ""
    arity = 1

    @property
    def splits_rows(self) -> tuple[int, ...]:
        # Every element from the elements at its own position: every operand row by row.
        return tuple(range(self.arity))
    inplace_input = 0
    positive_inputs: tuple[int, ...] = ()
    symbol = ""
    formula = None

    def __init_subclass__(cls, **traits):
        super().__init_subclass__()
        for trait, value in traits.items():
            if not hasattr(cls, trait):  # a misspelt trait would otherwise be ignored
                raise TypeError(f"{cls.__name__}: no elementwise trait {trait!r}")
            setattr(cls, trait, staticmethod(value) if trait == "formula" else value)

    def __call__(self, *inputs: Node) -> Node:
        return Node(self, self.check_inputs(inputs))

    def check_inputs(self, inputs) -> list[Node]:
        """``inputs`` when they are ``arity`` nodes; the error names the operator."""
        if len(inputs) != self.arity:
            raise ArgumentTypeError(f"{self.name} takes {self.arity} input node(s), got "
                                    f"{len(inputs)}")
        return [check_node(self.name, f"input {i}", x) for i, x in enumerate(inputs)]

    def example(self, inputs: list[Node]) -> Node:
        return self(*inputs)

    def constants(self, node: Node) -> tuple[float, ...]:
        return ()

    def infer_shape(self, node, input_shapes):
        return tuple(input_shapes[0])

    def node_kind(self, node: Node) -> str:
        """The formula of ``node``: ``kernel_kind``, unless an attribute picks another one
        (GELU's ``approximate``)."""
        return self.kernel_kind

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec(self.node_kind(node), (tuple(tuple(s) for s in input_shapes),
                                                 tuple(output_shape), self.constants(node)))

    def epilogue(self, node, inputs, chain_input, shapes):
        # A unary formula joins a matmul's kernel as it is: it reads only the running result.
        if self.arity != 1:
            return None
        kind = self.node_kind(node)
        return Epilogue(kind, kind, constants=self.constants(node)), []

    def reference(self, node, *arrays):
        if self.formula is None:
            return super().reference(node, *arrays)
        return self.formula(*arrays, *self.constants(node))


class BroadcastBinaryOp(ElementwiseOp):
    """``a symbol b`` with numpy broadcasting of both inputs."""

    arity = 2
    symbol = "?"

    def __call__(self, a: Node, b: Node) -> Node:
        return Node(self, self.check_inputs((a, b)))

    def describe(self, node):
        return f"({short_name(node.inputs[0])}{self.symbol}{short_name(node.inputs[1])})"

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, _broadcast_rule, *input_shapes)

    def epilogue(self, node, inputs, chain_input, shapes):
        # Only the add joins a matmul's kernel (bias rows, residuals); the others would need
        # an epilogue label per operand side, for no graph that dlsys builds today.
        return None


class AddOp(BroadcastBinaryOp, name="Add", kernel_kind="add", symbol="+", formula=np.add):
    """``a + b`` with numpy broadcasting."""

    def gradient(self, node, output_grad):
        a, b = node.inputs
        return [reducesumto_op(output_grad, a), reducesumto_op(output_grad, b)]

    def epilogue(self, node, inputs, chain_input, shapes):
        a, b = inputs
        if a is b or shapes[chain_input] != shapes[node]:
            return None
        other = b if a is chain_input else a
        # A bias row broadcast over the batch: read the vector itself, skip the broadcast.
        vector = other.inputs[0] if other.op.broadcasts_input else other
        # Rows of a matrix, or of a stack of them (a dense layer over a sequence, (B, T, N)):
        # the matmul kernel adds the bias along its last axis either way.
        if len(shapes[node]) in (2, 3) and shapes[vector] == (shapes[node][-1],):
            return epilogue_from_label("bias_add"), [vector]
        if len(shapes[node]) == 4 and shapes[vector] == (shapes[node][1], 1, 1):
            # A convolution's bias, one per channel.
            return epilogue_from_label("channel_bias_add"), [vector]
        if shapes[other] == shapes[node]:
            return epilogue_from_label("add"), [other]
        return None


class MulOp(BroadcastBinaryOp, name="Mul", kernel_kind="mul", symbol="*",
            formula=np.multiply):
    """``a * b`` with numpy broadcasting."""

    def gradient(self, node, output_grad):
        a, b = node.inputs
        return [reducesumto_op(output_grad * b, a), reducesumto_op(output_grad * a, b)]


class SubOp(BroadcastBinaryOp, name="Sub", kernel_kind="sub", symbol="-",
            formula=np.subtract):
    """``a - b`` with numpy broadcasting."""

    def gradient(self, node, output_grad):
        a, b = node.inputs
        # Negated after the sum: b is never larger than the output, often much smaller.
        return [reducesumto_op(output_grad, a), neg_op(reducesumto_op(output_grad, b))]


class DivOp(BroadcastBinaryOp, name="Div", kernel_kind="div", symbol="/", formula=np.divide,
            positive_inputs=(1,)):
    """``a / b`` with numpy broadcasting."""

    def gradient(self, node, output_grad):
        a, b = node.inputs
        # d(a/b)/db = -a/b**2 = -(a/b)/b: read from the output rather than squaring b.
        return [reducesumto_op(output_grad / b, a),
                neg_op(reducesumto_op(output_grad * node / b, b))]


def _broadcast_rule(shape_a, shape_b):
    out = broadcast_shape(shape_a, shape_b)
    if out is None:
        raise ShapeError("shapes do not broadcast")
    return out


class AddByConstOp(ElementwiseOp, name="AddByConst", kernel_kind="add_const", symbol="+",
                   formula=np.add):
    """``a + c`` for a number ``c``; the operators below take their constant the same way."""

    def __call__(self, a: Node, const_val: float) -> Node:
        (a,) = self.check_inputs((a,))
        return Node(self, [a], {"const": self.check_const(a, const_val)})

    def check_const(self, a: Node, const_val) -> float:
        return check_constant(f"{self.name}({a.name}, ...): the constant", const_val)

    def example(self, inputs):
        return self(inputs[0], 2.5)

    def constants(self, node):
        return (node.attrs["const"],)

    def describe(self, node):
        return f"({short_name(node.inputs[0])}{self.symbol}{node.attrs['const']:g})"

    def gradient(self, node, output_grad):
        return [output_grad]


class MulByConstOp(AddByConstOp, name="MulByConst", kernel_kind="mul_const", symbol="*",
                   formula=np.multiply):
    """``a * c`` for a number ``c``."""

    def example(self, inputs):
        return self(inputs[0], -0.75)

    def gradient(self, node, output_grad):
        return [output_grad * node.attrs["const"]]


class DivByConstOp(AddByConstOp, name="DivByConst", kernel_kind="div_const", symbol="/",
                   formula=np.divide):
    """``a / c`` for a number ``c`` other than 0."""

    def check_const(self, a, const_val):
        value = super().check_const(a, const_val)
        # A divisor that is 0 in float32 (1e-50 too) would fill a float32 kernel with inf.
        if np.float32(value) == 0:
            tiny = "" if value == 0 else ", which is 0 in float32"
            raise ArgumentError(f"{self.name}({a.name}, ...): cannot divide by the constant "
                                f"{const_val!r}{tiny}")
        return value

    def example(self, inputs):
        return self(inputs[0], 3.0)

    def gradient(self, node, output_grad):
        return [output_grad / node.attrs["const"]]


class RDivByConstOp(AddByConstOp, name="RDivByConst", kernel_kind="rdiv_const",
                    positive_inputs=(0,)):
    """``c / a`` for a number ``c``: a number divided by a tensor."""

    def describe(self, node):
        return f"({node.attrs['const']:g}/{short_name(node.inputs[0])})"

    def example(self, inputs):
        return self(inputs[0], 1.5)

    def gradient(self, node, output_grad):
        # d(c/a)/da = -c/a**2 = -(c/a)/a: read from the output rather than squaring a.
        return [neg_op(output_grad * node / node.inputs[0])]

    def reference(self, node, a):
        return node.attrs["const"] / a


class NegOp(ElementwiseOp, name="Neg", kernel_kind="neg", formula=np.negative):
    """``-a``."""

    def gradient(self, node, output_grad):
        return [neg_op(output_grad)]


class ReluOp(ElementwiseOp, name="Relu", kernel_kind="relu"):
    keeps_positive_sign = True

    def gradient(self, node, output_grad):
        return [relu_gradient_op(node.inputs[0], output_grad)]

    def reference(self, node, a):
        return np.where(a < 0, 0.0, a)  # keeps NaN, like the kernel


class ReluGradientOp(ElementwiseOp, name="ReluGradient", kernel_kind="relu_gradient", arity=2,
                     inplace_input=1):
    """``(a > 0) * g``."""

    sign_only_input = 0

    def infer_shape(self, node, input_shapes):
        return same_shape(node, input_shapes)

    def gradient(self, node, output_grad):
        # Zero almost everywhere in a; linear in g with the same mask.
        return [None, relu_gradient_op(node.inputs[0], output_grad)]

    def epilogue(self, node, inputs, chain_input, shapes):
        mask, upstream = inputs
        if chain_input is not upstream or mask is upstream:
            return None
        return epilogue_from_label("relu_mask"), [mask]

    def reference(self, node, a, g):
        return np.where(a > 0, g, 0.0)


class SigmoidOp(ElementwiseOp, name="Sigmoid", kernel_kind="sigmoid"):
    """``1 / (1 + exp(-a))``."""

    def gradient(self, node, output_grad):
        # sigmoid' = s (1 - s), read from the output itself.
        return [output_grad * (node * (node * -1.0 + 1.0))]

    def reference(self, node, a):
        return 1.0 / (1.0 + np.exp(-a))


class ExpOp(ElementwiseOp, name="Exp", kernel_kind="exp", formula=np.exp):
    def gradient(self, node, output_grad):
        return [output_grad * node]  # exp' = exp, read from the output itself


class LogOp(ElementwiseOp, name="Log", kernel_kind="log", formula=np.log, positive_inputs=(0,)):
    """The natural logarithm (NaN below 0, -inf at 0, as in numpy)."""

    def gradient(self, node, output_grad):
        return [output_grad / node.inputs[0]]


class TanhOp(ElementwiseOp, name="Tanh", kernel_kind="tanh", formula=np.tanh):
    def gradient(self, node, output_grad):
        # tanh' = 1 - tanh**2, read from the output itself.
        return [output_grad * (1.0 - node * node)]


GELU_APPROXIMATIONS = ("none", "tanh")


def _check_approximate(where: str, approximate) -> str:
    if approximate not in GELU_APPROXIMATIONS:
        raise ArgumentError(f"{where}: approximate must be 'none' or 'tanh' (as in PyTorch), "
                            f"got {approximate!r}")
    return approximate


def gelu_reference(x: np.ndarray, approximate: str, derivative: int = 0) -> np.ndarray:
    """GELU (``derivative`` 0) or its first or second derivative, in numpy."""
    if approximate == "tanh":
        k, a = np.sqrt(2 / np.pi), 0.044715
        t = np.tanh(k * (x + a * x ** 3))
        du = k * (1 + 3 * a * x * x)
        if derivative == 0:
            return 0.5 * x * (1 + t)
        if derivative == 1:
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
        return (1 - t * t) * (du + 0.5 * x * (6 * k * a * x - 2 * t * du * du))
    cdf = 0.5 * (1 + np.vectorize(math.erf, otypes=[float])(x / np.sqrt(2)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    return (x * cdf, cdf + x * pdf, pdf * (2 - x * x))[derivative]


class GeluOp(ElementwiseOp, name="Gelu", kernel_kind="gelu"):
    """``x * Phi(x)``, Phi the standard normal distribution function (``approximate``
    "none", through erf), or ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x**3)))``
    ("tanh"), as PyTorch's ``gelu``."""

    def __call__(self, x: Node, approximate: str = "none") -> Node:
        (x,) = self.check_inputs((x,))
        approximate = _check_approximate(f"{self.name}({x.name})", approximate)
        return Node(self, [x], {"approximate": approximate})

    def describe(self, node):
        tanh = ", tanh" if node.attrs["approximate"] == "tanh" else ""
        return f"{self.name}({short_name(node.inputs[0])}{tanh})"

    def node_kind(self, node):
        return "gelu_tanh" if node.attrs["approximate"] == "tanh" else "gelu"

    def gradient(self, node, output_grad):
        return [gelu_gradient_op(node.inputs[0], output_grad, node.attrs["approximate"])]

    def reference(self, node, x):
        return gelu_reference(x, node.attrs["approximate"])


class GeluGradientOp(ElementwiseOp, name="GeluGradient", kernel_kind="gelu_gradient",
                     arity=2, inplace_input=1):
    """``gelu'(x) * g`` (``derivative`` 1), the adjoint of GELU at its input ``x``, or
    ``gelu''(x) * g`` (``derivative`` 2), the adjoint of that one in ``x``."""

    def __call__(self, x: Node, g: Node, approximate: str = "none", derivative: int = 1) -> Node:
        x, g = self.check_inputs((x, g))
        approximate = _check_approximate(f"{self.name}({x.name}, {g.name})", approximate)
        return Node(self, [x, g], {"approximate": approximate, "derivative": derivative})

    def infer_shape(self, node, input_shapes):
        return same_shape(node, input_shapes)

    def node_kind(self, node):
        tanh = "_tanh" if node.attrs["approximate"] == "tanh" else ""
        return f"gelu{tanh}_{'gradient' if node.attrs['derivative'] == 1 else 'second'}"

    def gradient(self, node, output_grad):
        x, g = node.inputs
        approximate, derivative = node.attrs["approximate"], node.attrs["derivative"]
        if derivative == 2:
            raise GradientError(f"{node.name}: GELU has no third derivative in dlsys")
        # Linear in g; in x, the next derivative of GELU.
        return [gelu_gradient_op(x, g * output_grad, approximate, 2),
                gelu_gradient_op(x, output_grad, approximate, derivative)]

    def reference(self, node, x, g):
        return gelu_reference(x, node.attrs["approximate"], node.attrs["derivative"]) * g


class FillLikeOp(ElementwiseOp):
    """A constant tensor of the input's shape (the input's values are never read)."""

    kernel_kind = "fill"
    inplace_input = None

    def __init__(self, name: str, value: float):
        self.name = name
        self.value = value

    def kernel_inputs(self, node):
        return []

    def constants(self, node):
        return (self.value,)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec(self.kernel_kind, ((), tuple(output_shape), (self.value,)))

    def gradient(self, node, output_grad):
        return [None]

    def epilogue(self, node, inputs, chain_input, shapes):
        return None

    def reference(self, node, a):
        return np.full_like(a, self.value)


add_op = AddOp()
mul_op = MulOp()
sub_op = SubOp()
div_op = DivOp()
add_byconst_op = AddByConstOp()
mul_byconst_op = MulByConstOp()
div_byconst_op = DivByConstOp()
rdiv_byconst_op = RDivByConstOp()
neg_op = NegOp()
relu_op = ReluOp()
relu_gradient_op = ReluGradientOp()
sigmoid_op = SigmoidOp()
exp_op = ExpOp()
log_op = LogOp()
tanh_op = TanhOp()
gelu_op = GeluOp()
gelu_gradient_op = GeluGradientOp()
oneslike_op = FillLikeOp("OnesLike", 1.0)
zeroslike_op = FillLikeOp("ZerosLike", 0.0)

__all__ = ["ElementwiseOp", "BroadcastBinaryOp", "add_op", "mul_op", "sub_op", "div_op",
           "add_byconst_op", "mul_byconst_op", "div_byconst_op", "rdiv_byconst_op", "neg_op",
           "relu_op", "relu_gradient_op", "sigmoid_op", "exp_op", "log_op", "tanh_op",
           "gelu_op", "gelu_gradient_op", "oneslike_op", "zeroslike_op"]
