"""The kernel tests' shared table: every builder of ``dlsys.tvm_op`` with inputs and a numpy
reference, so the CPU and the CUDA tests check the very same cases.

References are computed in float64 from the definitions (not from dlsys code), and a kernel's
outputs are compared with them at the kernel's own precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from numpy.lib.stride_tricks import sliding_window_view

from dlsys import tvm_op as op
from dlsys.kernels.build import Kernel
from dlsys.ops import ELEMENTWISE_OPS, BroadcastBinaryOp, Variable, expand_op, expandmean_op

BROADCASTING_OPS = [o for o in ELEMENTWISE_OPS if isinstance(o, BroadcastBinaryOp)]

# float32 elementwise results are exact or one rounding away; reductions over positive
# inputs add no cancellation, so 1e-5 relative holds for them too. The absolute floor only
# covers results that are zero up to rounding (softmax - label where softmax is 1).
TOLERANCE = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}


def normal(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape)


def positive(rng: np.random.Generator, shape) -> np.ndarray:
    # Inputs of reductions: sums of positive terms keep float32's relative error small.
    return rng.uniform(0.5, 1.5, shape)


def one_hot(rng: np.random.Generator, shape) -> np.ndarray:
    rows, cols = shape
    return np.eye(cols)[rng.integers(0, cols, rows)]


def log_softmax(y: np.ndarray) -> np.ndarray:
    shifted = y - y.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def pad_images(x: np.ndarray, padding: tuple, value: float = 0.0) -> np.ndarray:
    (ph, pw) = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def conv2d(x: np.ndarray, f: np.ndarray, stride=(1, 1), padding=(0, 0)) -> np.ndarray:
    windows = sliding_window_view(pad_images(x, padding), f.shape[2:], axis=(2, 3))
    return np.einsum("bchwij,ocij->bohw", windows[:, :, ::stride[0], ::stride[1]], f)


def _window_slices(i: int, j: int, kernel: tuple, stride: tuple) -> tuple:
    """The padded image's rows and columns that output position (i, j) reads."""
    return (slice(None), slice(None), slice(i * stride[0], i * stride[0] + kernel[0]),
            slice(j * stride[1], j * stride[1] + kernel[1]))


def _crop(padded: np.ndarray, padding: tuple) -> np.ndarray:
    (ph, pw) = padding
    return padded[:, :, ph:padded.shape[2] - ph, pw:padded.shape[3] - pw]


def conv2d_grad_input(g, f, shape_x, stride, padding) -> np.ndarray:
    """Each output position's gradient sent back through the filter to the pixels it read."""
    dx = pad_images(np.zeros(shape_x), padding)
    for i, j in np.ndindex(g.shape[2:]):
        dx[_window_slices(i, j, f.shape[2:], stride)] += np.einsum("bo,ocij->bcij", g[:, :, i, j],
                                                                   f)
    return _crop(dx, padding)


def conv2d_grad_weight(x, g, kernel, stride, padding) -> np.ndarray:
    """Each output position's gradient times the pixels it read, summed into the filter."""
    xp = pad_images(x, padding)
    return sum(np.einsum("bo,bcij->ocij", g[:, :, i, j], xp[_window_slices(i, j, kernel, stride)])
               for i, j in np.ndindex(g.shape[2:]))


def pool2d(x, kind, kernel, stride, padding) -> np.ndarray:
    xp = pad_images(x, padding, -np.inf if kind == "max" else 0.0)
    rows = (xp.shape[2] - kernel[0]) // stride[0] + 1
    cols = (xp.shape[3] - kernel[1]) // stride[1] + 1
    out = np.zeros(x.shape[:2] + (rows, cols))
    for i, j in np.ndindex(rows, cols):
        window = xp[_window_slices(i, j, kernel, stride)]
        out[:, :, i, j] = window.max(axis=(2, 3)) if kind == "max" else window.mean(axis=(2, 3))
    return out


def pool2d_grad(x, g, kind, kernel, stride, padding) -> np.ndarray:
    """Max: each window's gradient to its first maximum (PyTorch's choice); mean: spread
    evenly over the window, padding included."""
    xp = pad_images(x, padding, -np.inf)
    dx = np.zeros_like(xp)
    for i, j in np.ndindex(g.shape[2:]):
        where = _window_slices(i, j, kernel, stride)
        if kind == "max":
            flat = xp[where].reshape(*x.shape[:2], -1)
            first = np.eye(flat.shape[-1])[flat.argmax(axis=-1)].reshape(*x.shape[:2], *kernel)
            dx[where] += first * g[:, :, i, j, None, None]
        else:
            dx[where] += g[:, :, i, j, None, None] / (kernel[0] * kernel[1])
    return _crop(dx, padding)


def reduce_to(a: np.ndarray, to_shape: tuple) -> np.ndarray:
    """Sum ``a`` down to ``to_shape``: numpy's broadcasting read backwards."""
    lead = a.ndim - len(to_shape)
    summed = a.sum(axis=tuple(range(lead)))
    axes = tuple(d for d, size in enumerate(to_shape) if size == 1 and summed.shape[d] != 1)
    return summed.sum(axis=axes, keepdims=True)


@dataclass(frozen=True)
class Case:
    """One builder call: ``build(tgt, dtype)``, its inputs, and the float64 reference."""

    id: str
    build: Callable[[str, str], Kernel]
    inputs: Callable[[np.random.Generator], list[np.ndarray]]
    reference: Callable[..., list[np.ndarray]]


def elementwise_cases(shape: tuple) -> list[Case]:
    s = shape

    def two(rng):
        return [normal(rng, s), normal(rng, s)]

    def one(rng):
        return [normal(rng, s)]

    return [
        Case(f"add{s}", lambda t, d: op.make_elemwise_add(s, t, "llvm", "f", d), two,
             lambda a, b: [a + b]),
        Case(f"mul{s}", lambda t, d: op.make_elemwise_mul(s, t, "llvm", "f", d), two,
             lambda a, b: [a * b]),
        Case(f"add_const{s}", lambda t, d: op.make_elemwise_add_by_const(s, 2.5, t, "llvm", "f",
                                                                          d), one,
             lambda a: [a + 2.5]),
        Case(f"mul_const{s}", lambda t, d: op.make_elemwise_mul_by_const(s, -0.75, t, "llvm",
                                                                          "f", d), one,
             lambda a: [a * -0.75]),
        Case(f"relu{s}", lambda t, d: op.make_relu(s, t, "llvm", "f", d), one,
             lambda a: [np.maximum(a, 0)]),
        Case(f"relu_gradient{s}", lambda t, d: op.make_relu_gradient(s, t, "llvm", "f", d), two,
             lambda a, g: [(a > 0) * g]),
        Case(f"sgd{s}", lambda t, d: op.make_sgd_update(s, 0.1, t, "llvm", "f", d), two,
             lambda w, g: [w - 0.1 * g]),
        Case(f"fill{s}", lambda t, d: op.make_fill(s, 3.0, t, "llvm", "f", d), lambda rng: [],
             lambda: [np.full(s, 3.0)]),
    ]


def domain_inputs(rng: np.random.Generator, op, shapes) -> list[np.ndarray]:
    """Inputs of ``shapes`` where the elementwise ``op`` is defined and smooth: positive
    where it declares so (``positive_inputs``), normal elsewhere."""
    return [positive(rng, s) if i in op.positive_inputs else normal(rng, s)
            for i, s in enumerate(shapes)]


def registered_elementwise_cases(shape: tuple) -> list[Case]:
    """Every elementwise operator of ``dlsys.ops.ELEMENTWISE_OPS``: its kernel spec built and
    run, against its numpy reference. A new operator joins by being registered."""
    cases = []
    for elementwise in ELEMENTWISE_OPS:
        node = elementwise.example([Variable(f"x{i}") for i in range(elementwise.arity)])
        reads = len(elementwise.kernel_inputs(node))

        def build(t, d, node=node):
            return node.op.kernel_spec(node, [shape] * len(node.inputs), shape).build(t, d)

        def inputs(rng, count=reads, op=elementwise):
            return domain_inputs(rng, op, [shape] * count)

        def reference(*arrays, node=node):
            # A fill reads no values: its reference gets a stand-in of the right shape.
            args = arrays if arrays else [np.zeros(shape)] * len(node.inputs)
            return [np.asarray(node.op.reference(node, *args))]

        cases.append(Case(f"{elementwise.name}{shape}", build, inputs, reference))
    return cases


def matmul_case(m: int, k: int, n: int, trans_a: bool, trans_b: bool) -> Case:
    shape_a = (k, m) if trans_a else (m, k)
    shape_b = (n, k) if trans_b else (k, n)
    return Case(f"matmul{shape_a}{'T' if trans_a else ''}x{shape_b}{'T' if trans_b else ''}",
                lambda t, d: op.make_matrix_mul(shape_a, trans_a, shape_b, trans_b, t, "llvm",
                                                "f", d),
                lambda rng: [positive(rng, shape_a), positive(rng, shape_b)],
                lambda a, b: [(a.T if trans_a else a) @ (b.T if trans_b else b)])


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value, value)


def conv2d_case(shape_x: tuple, shape_f: tuple, stride=1, padding=0) -> Case:
    """Stride 1 and no padding through the course's call, without the new arguments."""
    s, p = _pair(stride), _pair(padding)
    extra = {} if (s, p) == ((1, 1), (0, 0)) else {"stride": stride, "padding": padding}
    tag = "" if not extra else f"s{s}p{p}"
    return Case(f"conv2d{shape_x}{shape_f}{tag}",
                lambda t, d: op.make_conv2d(shape_x, shape_f, t, "llvm", "f", d, **extra),
                lambda rng: [positive(rng, shape_x), positive(rng, shape_f)],
                lambda x, f: [conv2d(x, f, s, p)])


def conv2d_grad_cases(shape_x: tuple, shape_f: tuple, stride, padding) -> list[Case]:
    """Both adjoints of a convolution: ``(G, F) -> dX`` and ``(X, G) -> dF``."""
    s, p = _pair(stride), _pair(padding)
    shape_g = conv2d(np.zeros(shape_x), np.zeros(shape_f), s, p).shape
    tag = f"{shape_x}{shape_f}s{s}p{p}"
    window = {"stride": stride, "padding": padding}
    return [
        Case(f"conv2d_grad_input{tag}",
             lambda t, d: op.make_conv2d_grad_input(shape_x, shape_f, t, "llvm", "f", d, **window),
             lambda rng: [positive(rng, shape_g), positive(rng, shape_f)],
             lambda g, f: [conv2d_grad_input(g, f, shape_x, s, p)]),
        Case(f"conv2d_grad_weight{tag}",
             lambda t, d: op.make_conv2d_grad_weight(shape_x, shape_f, t, "llvm", "f", d,
                                                     **window),
             lambda rng: [positive(rng, shape_x), positive(rng, shape_g)],
             lambda x, g: [conv2d_grad_weight(x, g, shape_f[2:], s, p)]),
    ]


def pool2d_cases(kind: str, shape_x: tuple, kernel, stride=None, padding=0) -> list[Case]:
    """A pooling and its adjoint; ``stride`` None is the builders' default (the kernel)."""
    k, p = _pair(kernel), _pair(padding)
    s = k if stride is None else _pair(stride)
    shape_g = pool2d(np.zeros(shape_x), kind, k, s, p).shape
    window = {"stride": stride, "padding": padding}
    forward = getattr(op, f"make_{kind}pool2d")
    backward = getattr(op, f"make_{kind}pool2d_grad")
    tag = f"{shape_x}k{k}s{s}p{p}"
    grad_inputs = ((lambda rng: [normal(rng, shape_x), positive(rng, shape_g)]) if kind == "max"
                   else (lambda rng: [positive(rng, shape_g)]))
    grad_reference = ((lambda x, g: [pool2d_grad(x, g, kind, k, s, p)]) if kind == "max"
                      else (lambda g: [pool2d_grad(np.zeros(shape_x), g, kind, k, s, p)]))
    return [
        Case(f"{kind}pool2d{tag}",
             lambda t, d: forward(shape_x, kernel, t, "llvm", "f", d, **window),
             lambda rng: [normal(rng, shape_x)], lambda x: [pool2d(x, kind, k, s, p)]),
        Case(f"{kind}pool2d_grad{tag}",
             lambda t, d: backward(shape_x, kernel, t, "llvm", "f", d, **window),
             grad_inputs, grad_reference),
    ]


# (images, filters, stride, padding): odd, non-square, LeNet's padded 5x5, mixed pairs.
CONV_WINDOWS = [((2, 3, 7, 6), (5, 3, 3, 2), 2, 1), ((3, 1, 9, 9), (4, 1, 5, 5), 1, 2),
                ((1, 2, 5, 7), (3, 2, 3, 3), (1, 2), (2, 1)), ((2, 3, 7, 6), (5, 3, 3, 2), 1, 0)]
# (images, kernel, stride, padding)
POOL_WINDOWS = [((2, 3, 7, 5), 3, 2, 1), ((1, 2, 9, 6), 2, None, 0),
                ((2, 1, 5, 8), (3, 2), (1, 2), (1, 0)), ((2, 2, 6, 1), (3, 1), None, (1, 0))]


def softmax_cases(shape: tuple, scale: float = 1.0) -> list[Case]:
    """Softmax, its mean cross-entropy loss and that loss's gradient; ``scale`` widens logits."""
    def logits(rng):
        return normal(rng, shape) * scale

    tag = f"{shape}x{scale:g}"
    return [
        Case(f"softmax{tag}", lambda t, d: op.make_matrix_softmax(shape, t, "llvm", "f", d),
             lambda rng: [logits(rng)], lambda y: [np.exp(log_softmax(y))]),
        Case(f"softmax_cross_entropy{tag}",
             lambda t, d: op.make_matrix_softmax_cross_entropy(shape, t, "llvm", "f", d),
             lambda rng: [logits(rng), one_hot(rng, shape)],
             lambda y, lab: [np.array([np.mean(-(lab * log_softmax(y)).sum(axis=1))])]),
        Case(f"softmax_cross_entropy_gradient{tag}",
             lambda t, d: op.make_matrix_softmax_cross_entropy_gradient(shape, t, "llvm", "f", d),
             lambda rng: [logits(rng), one_hot(rng, shape), np.array([0.5])],
             lambda y, lab, g: [(np.exp(log_softmax(y)) - lab) / shape[0] * g[0]]),
    ]


def reduce_case(shape: tuple, to_shape: tuple) -> Case:
    return Case(f"reduce_sum_to{shape}->{to_shape}",
                lambda t, d: op.make_reduce_sum_to(shape, to_shape, t, "llvm", "f", d),
                lambda rng: [positive(rng, shape)], lambda a: [reduce_to(a, to_shape)])


def reduce_axis_zero_case(shape: tuple) -> Case:
    return Case(f"reduce_sum_axis_zero{shape}",
                lambda t, d: op.make_reduce_sum_axis_zero(shape, t, "llvm", "f", d),
                lambda rng: [positive(rng, shape)], lambda a: [a.sum(axis=0)])


def broadcast_to_case(shape: tuple, to_shape: tuple) -> Case:
    return Case(f"broadcast_to{shape}->{to_shape}",
                lambda t, d: op.make_broadcast_to(shape, to_shape, t, "llvm", "f", d),
                lambda rng: [normal(rng, shape)], lambda a: [np.broadcast_to(a, to_shape)])


def broadcast_binary_case(name: str, shape_a: tuple, shape_b: tuple) -> Case:
    fn = {"add": np.add, "mul": np.multiply}[name]
    return Case(f"broadcast_{name}{shape_a}{shape_b}",
                lambda t, d: op.make_broadcast_binary(name, shape_a, shape_b, t, "llvm", "f", d),
                lambda rng: [normal(rng, shape_a), normal(rng, shape_b)],
                lambda a, b: [fn(a, b)])


def broadcasting_operator_cases(shape_a: tuple, shape_b: tuple) -> list[Case]:
    """Every broadcasting binary operator of the registry (sub, div...) on two shapes, built
    from its kernel spec (the course's builder takes add and mul only), against its numpy
    reference."""
    cases = []
    out_shape = np.broadcast_shapes(shape_a, shape_b)
    for binary in BROADCASTING_OPS:
        node = binary(Variable("a"), Variable("b"))

        def build(t, d, node=node):
            return node.op.kernel_spec(node, [shape_a, shape_b], out_shape).build(t, d)

        def inputs(rng, op=binary):
            return domain_inputs(rng, op, [shape_a, shape_b])

        cases.append(Case(f"{binary.name}{shape_a}{shape_b}", build, inputs,
                          lambda a, b, node=node: [node.op.reference(node, a, b)]))
    return cases


def reduce_axes_case(shape: tuple, axes, keepdims: bool, mean: bool = False) -> Case:
    """``sum``/``mean`` over ``axes``; numpy's result of no axes, ``()``, is dlsys's ``(1,)``."""
    name = "mean" if mean else "sum"
    builder = op.make_reduce_mean if mean else op.make_reduce_sum

    def reference(a):
        out = (np.mean if mean else np.sum)(a, axis=axes, keepdims=keepdims)
        return [np.reshape(out, np.shape(out) or (1,))]

    return Case(f"reduce_{name}{shape}axes={axes}{'keep' if keepdims else ''}",
                lambda t, d: builder(shape, axes, keepdims, t, "llvm", "f", d),
                lambda rng: [positive(rng, shape)], reference)


def expand_axes_case(shape: tuple, axes, keepdims: bool, mean: bool = False) -> Case:
    """The adjoint of a sum (or mean) over ``axes``: ``g`` spread back to ``shape``, built
    from its operator's kernel spec (it has no course builder)."""
    expand = expandmean_op if mean else expand_op
    node = expand(Variable("g"), Variable("x"), axes, keepdims)
    summed = np.sum(np.zeros(shape), axis=axes, keepdims=keepdims)
    g_shape = np.shape(summed) or (1,)
    kept = np.sum(np.zeros(shape), axis=axes, keepdims=True).shape  # g's axes in place

    def build(t, d):
        return node.op.kernel_spec(node, [g_shape, shape], shape).build(t, d)

    def reference(g):
        count = np.prod(shape) / np.prod(kept) if mean else 1
        return [np.broadcast_to(np.reshape(g, kept), shape) / count]

    return Case(f"{node.op.name}{g_shape}->{shape}axes={axes}", build,
                lambda rng: [normal(rng, g_shape)], reference)


def run_case(case: Case, tgt: str, dtype: str, device=None, seed: int = 0):
    """Build and run ``case``; returns ``(got, want)``, lists of numpy arrays."""
    device = device or tvm.cpu(0)
    kernel = case.build(tgt, dtype)
    inputs = [x.astype(dtype) for x in case.inputs(np.random.default_rng(seed))]
    want = case.reference(*[x.astype(np.float64) for x in inputs])
    outputs = [tvm.runtime.empty(s, dtype, device) for s in kernel.arg_shapes[len(inputs):]]
    kernel(*[tvm.runtime.tensor(x, device) for x in inputs], *outputs)
    return [o.numpy() for o in outputs], want


def assert_case(case: Case, tgt: str, dtype: str, device=None, seed: int = 0) -> None:
    got, want = run_case(case, tgt, dtype, device, seed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, w, **TOLERANCE[dtype], err_msg=case.id)


def window_schedule_cases() -> list[Case]:
    """Convolutions and pooling big enough for every part of the window schedule: stride 2
    with padding, and 70-column rows that it splits into whole vectors."""
    wide_x, wide_f = (2, 3, 9, 70), (4, 3, 3, 3)
    return ([conv2d_case((4, 3, 13, 12), (8, 3, 3, 3), 2, 1), conv2d_case(wide_x, wide_f, 1, 1)]
            + conv2d_grad_cases((4, 3, 13, 12), (8, 3, 3, 3), 2, 1)
            + conv2d_grad_cases(wide_x, wide_f, 1, 1)
            + pool2d_cases("max", (4, 3, 13, 12), 3, 2, 1)
            + pool2d_cases("avg", (4, 3, 13, 12), 3, 2, 1) + pool2d_cases("max", (2, 2, 8, 70), 2))


def odd_cases() -> list[Case]:
    """Every builder on sizes no tile divides: 1x1, primes, and shapes just past a tile."""
    cases = [c for s in [(1,), (1, 1), (7,), (13, 17), (3, 5, 7)] for c in elementwise_cases(s)]
    cases += [c for s in [(1,), (13, 17), (3, 5, 7)] for c in registered_elementwise_cases(s)]
    cases += [matmul_case(m, k, n, ta, tb) for (m, k, n) in [(1, 1, 1), (7, 13, 5), (17, 3, 33)]
              for ta in (False, True) for tb in (False, True)]
    cases += [conv2d_case((1, 1, 1, 1), (1, 1, 1, 1)), conv2d_case((2, 3, 7, 6), (5, 3, 3, 2)),
              conv2d_case((3, 2, 5, 5), (1, 2, 5, 5))]
    cases += [conv2d_case(*w) for w in CONV_WINDOWS[:-1]]
    cases += [c for w in CONV_WINDOWS for c in conv2d_grad_cases(*w)]
    cases += [c for kind in ("max", "avg") for w in POOL_WINDOWS for c in pool2d_cases(kind, *w)]
    cases += [c for s in [(1, 1), (1, 13), (13, 1), (7, 17)] for c in softmax_cases(s)]
    cases += [reduce_axis_zero_case(s) for s in [(1, 1), (7, 3), (17, 5, 3)]]
    cases += [reduce_case(s, t) for s, t in [((5,), (1,)), ((7, 3), (1, 3)), ((7, 3), (7, 1)),
                                            ((2, 3, 5), (3, 1)), ((4, 1, 5), (1, 5)),
                                            ((3, 4), (3, 4))]]
    cases += [broadcast_to_case(s, t) for s, t in [((1,), (1,)), ((3,), (7, 3)), ((1,), (2, 3)),
                                                  ((5, 1), (5, 7)), ((1, 3), (2, 4, 3))]]
    cases += [broadcast_binary_case(n, a, b) for n in ("add", "mul")
              for a, b in [((7, 3), (3,)), ((5, 1), (1, 6)), ((1,), (2, 3))]]
    cases += [c for a, b in [((7, 3), (3,)), ((5, 1), (1, 6)), ((1,), (2, 3)), ((3,), (2, 1, 3))]
              for c in broadcasting_operator_cases(a, b)]
    cases += [reduce_axes_case(s, axes, keep, mean) for mean in (False, True)
              for s, axes, keep in REDUCE_AXES]
    cases += [expand_axes_case(s, axes, keep, mean) for mean in (False, True)
              for s, axes, keep in REDUCE_AXES]
    return cases


# (shape, axes, keepdims): all axes, single and several, negative, none, size-1 axes.
REDUCE_AXES = [((7,), None, False), ((1,), 0, True), ((13, 17), None, True), ((13, 17), 0, False),
               ((13, 17), -1, False), ((13, 17), 1, True), ((3, 5, 7), (0, 2), False),
               ((3, 5, 7), (-1, -3), True), ((3, 5, 7), 1, False), ((3, 5, 7), (), False),
               ((4, 1, 5), 1, False), ((2, 3, 5, 7), (1, 3), False)]


def seed_cases() -> list[Case]:
    """The shapes of the course's seed tests."""
    return (elementwise_cases((2000, 3000))
            + [matmul_case(500, 700, 1000, ta, tb) for ta in (False, True) for tb in (False, True)]
            + [conv2d_case((100, 3, 28, 28), (10, 3, 5, 5))]
            + softmax_cases((400, 1000))
            + [reduce_axis_zero_case((400, 1000)), broadcast_to_case((1000,), (400, 1000))])


def large_logit_cases() -> list[Case]:
    """Logits of order 1000: exp overflows unless the row maximum is subtracted first."""
    return softmax_cases((16, 10), scale=1000.0) + softmax_cases((3, 1000), scale=1000.0)
