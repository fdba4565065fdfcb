"""The math functions, activations, comparisons and ``where`` of ``dlsys.ops.activations``:
float32 kernels against numpy on the values where formulas break (infinities, NaN, halves,
tiny and huge numbers), gradients against PyTorch's in float64 (second derivatives too), the
masks' lack of gradient, broadcasting past rank 4, and named errors. Every one of them is
also in the registry's tables (``dlsys.ops.ELEMENTWISE_OPS``): its kernel against its
reference, its gradient against finite differences, the random-graph fuzzer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.ops import activations as act

torch = pytest.importorskip("torch")

# Where formulas break: the infinities, NaN, signed zeros, halves (rounding), the ends of
# the float32 range and of the fast exp's and erf's branches.
EDGES = np.array([-np.inf, -100, -9.5, -3, -2.5, -1, -0.5, -0.0, 0.0, 1e-30, 0.5, 0.99,
                  1.0, 1.5, 3, 9.5, 100, np.inf, np.nan], np.float32)


def _run(node, feeds, dtype="float32"):
    return ad.Executor([node], dtype=dtype).run(feeds, convert_to_numpy_ret_vals=True)[0]


UNARY_FLOAT32 = {
    "sqrt": (act.sqrt_op, np.sqrt),
    "abs": (act.abs_op, np.abs),
    "sign": (act.sign_op, np.sign),
    "floor": (act.floor_op, np.floor),
    "ceil": (act.ceil_op, np.ceil),
    "round": (act.round_op, np.round),
    "sin": (act.sin_op, np.sin),
    "cos": (act.cos_op, np.cos),
    "atan": (act.atan_op, np.arctan),
    "asinh": (act.asinh_op, np.arcsinh),
    "erf": (act.erf_op, np.vectorize(math.erf)),
    "softplus": (act.softplus_op, lambda x: np.logaddexp(0, x)),
    "square": (lambda x: act.pow_byconst_op(x, 2), np.square),
    "cube": (lambda x: act.pow_byconst_op(x, 3), lambda x: x ** 3),
    "pow_half": (lambda x: act.pow_byconst_op(x, 0.5), lambda x: np.power(x, 0.5)),
    "pow_minus_one": (lambda x: act.pow_byconst_op(x, -1), lambda x: np.power(x, -1.0)),
    "pow_zero": (lambda x: act.pow_byconst_op(x, 0), lambda x: np.power(x, 0.0)),
    "pow_2_5": (lambda x: act.pow_byconst_op(x, 2.5), lambda x: np.power(x, 2.5)),
    "clip": (lambda x: act.clip_op(x, -1, 2), lambda x: np.clip(x, -1, 2)),
    "clip_low_only": (lambda x: act.clip_op(x, 0.5), lambda x: np.maximum(x, 0.5)),
    "clip_high_only": (lambda x: act.clip_op(x, None, 0.5), lambda x: np.minimum(x, 0.5)),
    "clip_low_above_high": (lambda x: act.clip_op(x, 2, -1),
                            lambda x: np.minimum(np.maximum(x, 2), -1)),
    "leaky_relu": (lambda x: act.leaky_relu_op(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    "selu": (lambda x: act.elu_op(x, 1.6733, 1.0507),
             lambda x: 1.0507 * np.where(x > 0, x, 1.6733 * np.expm1(np.minimum(x, 0)))),
    "hard_swish": (act.hard_swish_op, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "not": (act.logical_not_op, lambda x: (x == 0).astype(np.float32)),
    "is_nan": (act.is_nan_op, np.isnan),
    "is_inf": (act.is_inf_op, np.isinf),
    "is_inf_negative": (lambda x: act.is_inf_op(x, positive=False), np.isneginf),
    "is_inf_positive": (lambda x: act.is_inf_op(x, negative=False), np.isposinf),
}


@pytest.mark.parametrize("name", sorted(UNARY_FLOAT32))
def test_unary_kernels_match_numpy_at_the_edges(name):
    build, reference = UNARY_FLOAT32[name]
    x = ad.Variable("x")
    got = _run(build(x), {x: EDGES})
    with np.errstate(all="ignore"):
        expected = reference(EDGES.astype(np.float64))
    # NaN where numpy has NaN; a few float32 roundings elsewhere (erf's and exp's fits).
    np.testing.assert_allclose(got, expected, rtol=3e-6, atol=1e-7, equal_nan=True,
                               err_msg=name)


def test_erf_and_softplus_keep_their_digits_over_the_float32_range():
    values = np.concatenate([-np.geomspace(1e-6, 12, 200), np.geomspace(1e-6, 12, 200)])
    x = ad.Variable("x")
    erf = _run(act.erf_op(x), {x: values.astype(np.float32)})
    np.testing.assert_allclose(erf, [math.erf(v) for v in values.astype(np.float32)],
                               rtol=1e-6, atol=1e-30)
    softplus = _run(act.softplus_op(x), {x: (values * 7).astype(np.float32)})
    # Far below 0 softplus(x) = exp(x): log1p keeps it to its last digits.
    np.testing.assert_allclose(softplus, np.logaddexp(0, (values * 7).astype(np.float32)),
                               rtol=2e-6)


COMPARISONS = {
    "equal": (act.equal_op, np.equal), "less": (act.less_op, np.less),
    "greater": (act.greater_op, np.greater), "less_equal": (act.less_equal_op, np.less_equal),
    "greater_equal": (act.greater_equal_op, np.greater_equal),
    "and": (act.logical_and_op, lambda a, b: np.logical_and(a != 0, b != 0)),
    "or": (act.logical_or_op, lambda a, b: np.logical_or(a != 0, b != 0)),
    "xor": (act.logical_xor_op, lambda a, b: np.logical_xor(a != 0, b != 0)),
}


@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_comparisons_give_float_masks_with_numpy_broadcasting(name):
    op, reference = COMPARISONS[name]
    a, b = ad.Variable("a"), ad.Variable("b")
    # Ties, zeros, NaN (true for the logical operators, false in every comparison).
    left = np.array([[0, 1, -2, np.nan, 0.5], [3, 0, 0, 1, np.inf]], np.float32)
    right = np.array([[0], [1]], np.float32)
    got = _run(op(a, b), {a: left, b: right})
    np.testing.assert_array_equal(got, reference(left, right).astype(np.float32))
    assert got.dtype == np.float32


def test_where_selects_on_any_nonzero_condition_and_broadcasts_past_rank_four():
    c, a, b = ad.Variable("c"), ad.Variable("a"), ad.Variable("b")
    rng = np.random.default_rng(0)
    condition = rng.choice([0.0, 1.0, -2.5, np.nan], size=(2, 1, 3, 1, 4))
    x, y = rng.normal(size=(3, 2, 1)), rng.normal(size=(2, 1, 1, 1, 1, 1))
    got = _run(act.where_op(c, a, b), {c: condition, a: x, b: y}, "float64")
    np.testing.assert_array_equal(got, np.where(condition != 0, x, y))
    assert got.shape == (2, 2, 1, 3, 2, 4)


def _dlsys_gradients(build, arrays, second=False):
    """``build``'s value and its inputs' gradients (or the gradients of the gradients' sum,
    with ``second``) for the loss ``sum(build(...) * weight)``, in float64."""
    nodes = [ad.Variable(f"x{i}") for i in range(len(arrays))]
    out = build(*nodes)
    weight = ad.Variable("w")
    weights = np.random.default_rng(5).normal(size=np.broadcast_shapes(
        *(a.shape for a in arrays)))
    grads = ad.gradients(out * weight, nodes)
    if second:
        grads = ad.gradients(sum(ad.sum_op(g * g) for g in grads[1:]) + ad.sum_op(
            grads[0] * grads[0]), nodes)
    feeds = dict(zip(nodes, arrays)) | {weight: weights}
    executor = ad.Executor(grads, dtype="float64")
    # A piecewise linear function's second derivative reads no upstream weight.
    feeds = {node: value for node, value in feeds.items() if node in executor.placeholders}
    return executor.run(feeds, convert_to_numpy_ret_vals=True), weights


def _torch_gradients(fn, arrays, weights, second=False):
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    grads = torch.autograd.grad((out * torch.tensor(weights)).sum(), tensors,
                                create_graph=second, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]
    if second:
        total = sum((g * g).sum() for g in grads)
        if not total.requires_grad:  # piecewise linear: no second derivative anywhere
            return [np.zeros(a.shape) for a in arrays]
        grads = torch.autograd.grad(total, tensors, allow_unused=True)
    return [np.zeros(a.shape) if g is None else g.detach().numpy()
            for g, a in zip(grads, arrays)]


F = torch.nn.functional
# name -> (dlsys builder, PyTorch function, input shapes, positive inputs, second derivative)
GRADIENT_CASES = {
    "elu": (lambda x: act.elu_op(x, 0.7), lambda x: F.elu(x, 0.7), [(3, 5)], (), True),
    "selu": (lambda x: act.elu_op(x, 1.6732632423543772, 1.0507009873554805), F.selu,
             [(3, 5)], (), True),
    "leaky_relu": (lambda x: act.leaky_relu_op(x, 0.2), lambda x: F.leaky_relu(x, 0.2),
                   [(3, 5)], (), True),
    "hard_swish": (act.hard_swish_op, F.hardswish, [(4, 6)], (), True),
    "clip": (lambda x: act.clip_op(x, -0.5, 0.8), lambda x: x.clamp(-0.5, 0.8), [(3, 5)], (),
             True),
    "softplus": (act.softplus_op, F.softplus, [(3, 5)], (), True),
    "erf": (act.erf_op, torch.erf, [(3, 5)], (), True),
    "sqrt": (act.sqrt_op, torch.sqrt, [(3, 5)], (0,), True),
    "sin_cos": (lambda x: act.sin_op(x) * act.cos_op(x), lambda x: x.sin() * x.cos(),
                [(3, 5)], (), True),
    "atan_asinh": (lambda x: act.atan_op(x) * act.asinh_op(x),
                   lambda x: torch.atan(x) * torch.asinh(x), [(3, 5)], (), True),
    "abs": (act.abs_op, torch.abs, [(3, 5)], (), False),
    "pow_const": (lambda x: act.pow_byconst_op(x, 2.5), lambda x: x ** 2.5, [(3, 5)], (0,),
                  True),
    "pow_broadcast": (act.pow_op, torch.pow, [(2, 3, 4), (3, 1)], (0,), True),
    "prelu_per_channel": (act.prelu_op, lambda x, s: torch.where(x > 0, x, s * x),
                          [(2, 3, 4, 5), (3, 1, 1)], (), False),
    "prelu_both_broadcast": (act.prelu_op, lambda x, s: torch.where(x > 0, x, s * x),
                             [(3, 1), (2, 1, 4)], (), False),
    "where": (lambda c, a, b: act.where_op(act.greater_op(c, a), a, b),
              lambda c, a, b: torch.where(c > a, a, b), [(3, 4), (3, 4), (4,)], (), False),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradients_match_pytorch(name):
    build, reference, shapes, positive, second = GRADIENT_CASES[name]
    rng = np.random.default_rng(1)
    arrays = [rng.uniform(0.3, 2.0, s) if i in positive else rng.normal(size=s) * 2
              for i, s in enumerate(shapes)]
    for order in ([False, True] if second else [False]):
        ours, weights = _dlsys_gradients(build, arrays, order)
        theirs = _torch_gradients(reference, arrays, weights, order)
        for i, (g, t) in enumerate(zip(ours, theirs)):
            np.testing.assert_allclose(g, t, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} input {i} second={order}")


def test_masks_pass_no_gradient_but_where_passes_it_to_the_chosen_branch():
    a, b = ad.Variable("a"), ad.Variable("b")
    mask = act.less_op(a, b) + act.logical_not_op(a) + act.round_op(b)
    grads = ad.gradients(ad.sum_op(mask), [a, b])
    feeds = {a: np.array([[1.0, -2.0]]), b: np.array([[0.5, 3.0]])}
    for g in ad.Executor(grads, dtype="float64").run(feeds, convert_to_numpy_ret_vals=True):
        np.testing.assert_array_equal(g, 0.0)
    # A condition of 2.5 (a number cast to bool) routes the gradient as it routed values.
    c = ad.Variable("c")
    ga, gb = ad.gradients(ad.sum_op(act.where_op(c, a, b)), [a, b])
    feeds[c] = np.array([[2.5, 0.0]])
    got = ad.Executor([ga, gb], dtype="float64").run(feeds, convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(got[0], [[1.0, 0.0]])
    np.testing.assert_array_equal(got[1], [[0.0, 1.0]])


@pytest.mark.parametrize("build, error, pattern", [
    (lambda x: act.clip_op(x, float("nan")), ArgumentError, r"Clip\(x, \.\.\.\): the low bound"),
    (lambda x: act.leaky_relu_op(x, float("inf")), ArgumentError, r"LeakyRelu\(x, \.\.\.\)"),
    (lambda x: act.elu_op(x, "one"), ArgumentTypeError, r"Elu\(x, \.\.\.\): alpha"),
    (lambda x: act.pow_byconst_op(x, None), ArgumentTypeError, r"PowByConst\(x, \.\.\.\)"),
    (lambda x: act.where_op(x, x), ArgumentTypeError, r"Where takes 3 input"),
    (lambda x: act.equal_op(x, 1.0), ArgumentTypeError, r"Equal: input 1 must be a graph"),
])
def test_bad_arguments_name_the_operator(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build(ad.Variable("x"))
