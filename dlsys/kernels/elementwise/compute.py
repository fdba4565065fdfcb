"""The elementwise family's compute: the scalar formula of each elementwise kind, the kernel
that applies one over broadcast inputs, broadcasting itself, and SGD's update of many
parameters in one kernel. All of them run with the ``injective`` schedule
(``dlsys.kernels.common.loops``); a fused epilogue applies the same formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape, TensorList, broadcast_index
from dlsys.kernels.elementwise import fastmath

# ------------------------------------------------------------------ elementwise
# The scalar formula of each elementwise kernel kind: one element of each input, then the
# kernel's constants, in; the output element out. ``elementwise`` turns a formula into a
# kernel over broadcast inputs, and a fused matmul applies the same formula to its result,
# so an elementwise operator's math is written once, here.


def add(x, y):
    return x + y


def mul(x, y):
    return x * y


def add_const(x, k):
    return x + k


def mul_const(x, k):
    return x * k


def sub(x, y):
    return x - y


def div(x, y):
    return x / y


def neg(x):
    return -x


def div_const(x, k):
    # A true division, not a multiply by 1/k, so that ``a / 3`` rounds as numpy's does.
    return x / k


def rdiv_const(x, k):
    """``k / x``: a number divided by a tensor."""
    return k / x


def exp(x):
    # Vectorised in float32: TVM's exp is a C library call per element (fastmath).
    return fastmath.exp(x)


def log(x):
    return te.log(x)


def tanh(x):
    # Vectorised in float32: TVM's tanh ran 12 ns an element on znver4 (fastmath).
    return fastmath.tanh(x)


def relu(x):
    # ``x < 0`` is false for NaN, so NaN passes through as in numpy and PyTorch, and a NaN
    # in the data or the parameters reaches the loss instead of being trained on as 0.
    return tirx.Select(x < tirx.const(0, x.dtype), tirx.const(0, x.dtype), x)


def relu_gradient(a, g):
    """``(a > 0) * g``: the adjoint of relu at input (or output) ``a``."""
    return tirx.Select(a > tirx.const(0, a.dtype), g, tirx.const(0, g.dtype))


def sigmoid(x):
    one = tirx.const(1, x.dtype)
    return one / (one + fastmath.exp(-x))


# GELU, x * Phi(x), and its first two derivatives, exact (through erf) and in PyTorch's tanh
# form. Phi is the standard normal distribution function, phi its density.
TANH_SCALE, TANH_CUBIC = math.sqrt(2 / math.pi), 0.044715


# Phi and phi come from fastmath, vectorised formulas in float32 (TVM's erf is a C library
# call per element).
def gelu(x):
    return x * fastmath.normal_cdf(x)


def gelu_gradient(x, g):
    """``gelu'(x) * g = (Phi(x) + x phi(x)) * g``."""
    return fastmath.with_normal_cdf_pdf(x, lambda cdf, pdf: (cdf + x * pdf) * g)


def gelu_second(x, g):
    """``gelu''(x) * g = phi(x) (2 - x**2) * g``."""
    return fastmath.normal_pdf(x) * (tirx.const(2, x.dtype) - x * x) * g


def _tanh_form(x):
    """``t = tanh(u)`` and ``u'`` for ``u = k (x + a x**3)``: GELU's tanh form."""
    k, a = (tirx.const(c, x.dtype) for c in (TANH_SCALE, TANH_CUBIC))
    x2 = x * x
    return fastmath.tanh(k * (x + a * x2 * x)), k * (tirx.const(1, x.dtype) + tirx.const(
        3 * TANH_CUBIC, x.dtype) * x2)


def gelu_tanh(x):
    half = tirx.const(0.5, x.dtype)
    return half * x * (tirx.const(1, x.dtype) + _tanh_form(x)[0])


def gelu_tanh_gradient(x, g):
    """``(0.5 (1 + t) + 0.5 x (1 - t**2) u') * g``."""
    tanh, du = _tanh_form(x)
    half, one = tirx.const(0.5, x.dtype), tirx.const(1, x.dtype)
    return fastmath.bind(tanh, lambda t: (half * (one + t) + half * x * (one - t * t) * du) * g)


def gelu_tanh_second(x, g):
    """``(1 - t**2) (u' + 0.5 x (u'' - 2 t u'**2)) * g``, ``u'' = 6 k a x``."""
    tanh, du = _tanh_form(x)
    half, one = tirx.const(0.5, x.dtype), tirx.const(1, x.dtype)
    ddu = tirx.const(6 * TANH_SCALE * TANH_CUBIC, x.dtype) * x
    return fastmath.bind(tanh, lambda t: (one - t * t) * (
        du + half * x * (ddu - tirx.const(2, x.dtype) * t * du * du)) * g)


def sgd(w, g, lr):
    """``w - lr * g``; reads each element before writing it, so it may run in place."""
    return w - lr * g


def fill(value):
    return value


INPUT_NAMES = "ABDEFGHIJ"  # C is the classic name of an output


def elementwise(formula: Callable, input_shapes: Sequence[Shape], out_shape: Shape,
                constants: Sequence[float], dtype: str) -> tuple[TensorList, TensorList]:
    """``C = formula(*inputs, *constants)`` with every input broadcast to ``out_shape``."""
    inputs = [te.placeholder(s, dtype=dtype, name=INPUT_NAMES[i])
              for i, s in enumerate(input_shapes)]
    consts = [tirx.const(c, dtype) for c in constants]

    def body(*index):
        elements = [t[tuple(broadcast_index(index, s, out_shape))]
                    for t, s in zip(inputs, input_shapes)]
        return formula(*elements, *consts)

    return inputs, [te.compute(out_shape, body, name=formula.__name__)]


def elemwise_add(shape: Shape, dtype: str):
    return elementwise(add, [shape, shape], shape, (), dtype)


def broadcast_to(shape: Shape, to_shape: Shape, dtype: str):
    """Numpy broadcasting of ``A`` to ``to_shape`` (new leading axes and size-1 axes)."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    c = te.compute(to_shape, lambda *i: a[tuple(broadcast_index(i, shape, to_shape))],
                   name="broadcast")
    return [a], [c]


def causal_mask(shape: Shape, fill: float, dtype: str):
    """``A[..., i, j]`` where ``j <= i + S - T`` and ``fill`` elsewhere, over the last two
    axes (T, S) of ``A``: attention's causal mask (``fill`` -inf) and its adjoint (0)."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    offset = shape[-1] - shape[-2]
    value = tirx.const(fill, dtype)
    c = te.compute(shape, lambda *i: tirx.Select(i[-1] <= i[-2] + offset, a[i], value),
                   name="causal_mask")
    return [a], [c]


def sgd_update_many(shapes: Sequence[Shape], dtype: str):
    """One SGD step for many parameters in one kernel: inputs ``lr, W_1..W_n, G_1..G_n``,
    outputs ``W_1'..W_n'`` (which may be the ``W_i`` themselves: each element is read before
    it is written). The learning rate is a (1,) tensor, read at run time, so a schedule that
    changes it compiles nothing."""
    lr = te.placeholder((1,), dtype=dtype, name="lr")
    weights = [te.placeholder(s, dtype=dtype, name=f"W{i}") for i, s in enumerate(shapes)]
    grads = [te.placeholder(s, dtype=dtype, name=f"G{i}") for i, s in enumerate(shapes)]
    updated = [_sgd_block(w, g, lr, i) for i, (w, g) in enumerate(zip(weights, grads))]
    return [lr, *weights, *grads], updated


def _sgd_block(w: te.Tensor, g: te.Tensor, lr: te.Tensor, position: int) -> te.Tensor:
    return te.compute(w.shape, lambda *i: sgd(w[i], g[i], lr[0]), name=f"sgd{position}")
