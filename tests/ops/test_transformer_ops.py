"""The transformer's math operators (layer norm, GELU, softmax and log-softmax along any
axis, the causal mask) and broadcasting binary operators on rank 3 and 4: values and
gradients against PyTorch in float64 (1e-6 relative) on odd sizes, gradients against finite
differences, stability at extreme and masked logits, and the named errors of bad calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError

F = torch.nn.functional
RTOL, ATOL = 1e-6, 1e-9
SHAPES = [(4, 6), (3, 5, 7), (2, 3, 4, 5)]


def _run(outputs, feeds, dtype="float64"):
    return ad.Executor(outputs, dtype=dtype).run(feeds, convert_to_numpy_ret_vals=True)


def _against_torch(build, torch_build, arrays, dtype="float64", rtol=RTOL, atol=ATOL):
    """``build``'s value and the gradients of ``sum(out * R)`` against PyTorch's."""
    rng = np.random.default_rng(7)
    inputs = [ad.Variable(f"x{i}") for i in range(len(arrays))]
    out = build(*inputs)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = torch_build(*tensors)
    weight = rng.normal(size=tuple(expected.shape))
    (expected * torch.tensor(weight)).sum().backward()
    r = ad.Variable("R")
    grads = ad.gradients(out * r, inputs)
    feeds = {**dict(zip(inputs, arrays)), r: weight}
    got = _run([out, *grads], feeds, dtype)
    np.testing.assert_allclose(got[0], expected.detach().numpy(), rtol=rtol, atol=atol)
    for node, g, t in zip(inputs, got[1:], tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=rtol, atol=atol, err_msg=node.name)


# ---------------------------------------------------------------- against PyTorch
@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_matches_torch(shape):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=shape) * 3 + 1, rng.normal(size=shape[-1:]),
              rng.normal(size=shape[-1:])]
    _against_torch(lambda x, g, b: ad.layernorm_op(x, g, b, eps=1e-5),
                   lambda x, g, b: F.layer_norm(x, shape[-1:], g, b, eps=1e-5), arrays)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_float32_layernorm_and_gradients_match_float64(offset):
    # Statistics of float32 rows (float32 lane partials, float64 totals, two passes): rows
    # far from 0 lose only the rounding of their mean to float32 (offset * 6e-8).
    rng = np.random.default_rng(8)
    x, gamma, beta, g = (ad.Variable(n) for n in ("x", "gamma", "beta", "g"))
    values = [rng.normal(size=(6, 300)) + offset, rng.normal(size=300), rng.normal(size=300),
              rng.normal(size=(6, 300))]
    values = [v.astype(np.float32).astype(np.float64) for v in values]
    out = ad.layernorm_op(x, gamma, beta)
    nodes = [out, *ad.gradients(out * g, [x, gamma, beta])]
    feeds = dict(zip((x, gamma, beta, g), values))
    tol = 2e-6 + offset * 1e-7
    for got, want in zip(_run(nodes, feeds, "float32"), _run(nodes, feeds, "float64")):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_matches_torch(shape, approximate):
    x = np.random.default_rng(1).normal(size=shape) * 3
    _against_torch(lambda a: ad.gelu_op(a, approximate),
                   lambda a: F.gelu(a, approximate=approximate), [x])


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_along_every_axis_matches_torch(shape, log):
    x = np.random.default_rng(2).normal(size=shape) * 4
    ours, theirs = (ad.logsoftmax_op, torch.log_softmax) if log else (ad.softmax_op,
                                                                       torch.softmax)
    for axis in [*range(len(shape)), -1, -len(shape)]:
        _against_torch(lambda a, axis=axis: ours(a, axis),
                       lambda a, axis=axis: theirs(a, axis), [x])


@pytest.mark.parametrize("shape", [(5, 5), (3, 4, 6), (2, 2, 3, 3), (2, 4, 1)])
def test_causal_softmax_matches_torch(shape):
    # The mask alone is -inf in places; behind a softmax, values and gradients are finite.
    t, s = shape[-2:]
    x = np.random.default_rng(3).normal(size=shape)
    keep = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
    _against_torch(lambda a: ad.softmax_op(ad.causal_mask_op(a)),
                   lambda a: torch.softmax(a.masked_fill(~keep, float("-inf")), -1), [x])


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(5, 5), (3, 4, 6), (2, 2, 3, 3), (2, 4, 1)])
def test_fused_causal_softmax_matches_torch(shape, log):
    t, s = shape[-2:]
    x = np.random.default_rng(3).normal(size=shape)
    keep = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
    ours, theirs = (ad.logsoftmax_op, torch.log_softmax) if log else (ad.softmax_op,
                                                                       torch.softmax)
    # With T > S the first rows have no key at all: NaN forward (as PyTorch's), and a
    # gradient of 0 to the masked logits (as PyTorch's through masked_fill).
    _against_torch(lambda a: ours(a, causal=True),
                   lambda a: theirs(a.masked_fill(~keep, float("-inf")), -1), [x])


def test_causal_mask_values_and_pytorch_convention():
    x = ad.Variable("x")
    values = np.arange(2 * 3 * 5, dtype=float).reshape(2, 3, 5)
    (got,) = _run([ad.causal_mask_op(x)], {x: values})
    # T == S: PyTorch's is_causal keeps j <= i.
    square = torch.ones(3, 3, dtype=torch.bool).tril()
    (got_square,) = _run([ad.causal_mask_op(x)], {x: values[..., :3]})
    np.testing.assert_array_equal(np.isinf(got_square), ~square.numpy()[None].repeat(2, 0))
    # T < S: the queries are the last T positions, so query i sees keys up to i + S - T.
    keep = np.arange(5)[None, :] <= np.arange(3)[:, None] + 2
    np.testing.assert_array_equal(got, np.where(keep, values, -np.inf))


# ---------------------------------------------------------------- finite differences
GRADIENT_CASES = {
    "layernorm_2d": (lambda x, g, b: ad.layernorm_op(x, g, b), [(4, 5), (5,), (5,)]),
    "layernorm_3d": (lambda x, g, b: ad.layernorm_op(x, g, b, eps=0.1), [(2, 3, 4), (4,), (4,)]),
    "layernorm_4d": (lambda x, g, b: ad.layernorm_op(x, g, b), [(2, 1, 3, 3), (3,), (3,)]),
    "gelu": (ad.gelu_op, [(3, 5, 2)]),
    "gelu_tanh": (lambda x: ad.gelu_op(x, "tanh"), [(2, 3, 2, 2)]),
    "gelu_second": (lambda x: ad.gradients(ad.sum_op(ad.gelu_op(x) * x), [x])[0], [(3, 4)]),
    "gelu_tanh_second": (lambda x: ad.gradients(ad.sum_op(ad.gelu_op(x, "tanh") * x),
                                                [x])[0], [(3, 4)]),
    "softmax_last": (ad.softmax_op, [(3, 5, 7)]),
    "softmax_middle": (lambda x: ad.softmax_op(x, 1), [(2, 3, 4)]),
    "softmax_first_4d": (lambda x: ad.softmax_op(x, 0), [(3, 2, 2, 2)]),
    "logsoftmax_last": (ad.logsoftmax_op, [(4, 5)]),
    "logsoftmax_middle": (lambda x: ad.logsoftmax_op(x, -2), [(2, 3, 4, 2)]),
    "causal_softmax": (lambda x: ad.softmax_op(ad.causal_mask_op(x)), [(2, 3, 5)]),
    "causal_softmax_fused": (lambda x: ad.softmax_op(x, causal=True), [(2, 3, 4)]),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients_match_finite_differences(case):
    build, shapes = GRADIENT_CASES[case]
    check_gradients(build, shapes)


# ---------------------------------------------------------------- stability
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_is_stable_for_huge_logits(dtype):
    x = ad.Variable("x")
    values = np.random.default_rng(4).choice([-1e4, 1e4, 0.0, 9999.5], size=(3, 4, 8))
    got = _run([ad.softmax_op(x), ad.logsoftmax_op(x, axis=1)], {x: values}, dtype)
    t = torch.tensor(values)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got[0], torch.softmax(t, -1).numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(got[1], torch.log_softmax(t, 1).numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masked_rows_are_finite_and_all_masked_rows_are_nan(dtype):
    x, g = ad.Variable("x"), ad.Variable("g")
    values = np.random.default_rng(5).normal(size=(3, 6))
    values[0, [1, 4]] = -np.inf  # some masked positions: finite row, exact zeros
    values[1, :5] = -np.inf  # one position left
    values[2] = -np.inf  # nothing left: NaN, as in PyTorch
    soft, logs = ad.softmax_op(x), ad.logsoftmax_op(x)
    grads = ad.gradients(soft * g, [x]) + ad.gradients(logs * g, [x])
    upstream = np.ones((3, 6))
    got = _run([soft, logs, *grads], {x: values, g: upstream}, dtype)
    t = torch.tensor(values)
    for ours, theirs in zip(got[:2], (torch.softmax(t, -1), torch.log_softmax(t, -1))):
        np.testing.assert_allclose(ours[:2], theirs[:2].numpy(), rtol=1e-5, atol=1e-7)
        assert np.isnan(ours[2]).all()
    assert got[0][0, 1] == 0 and got[0][0, 4] == 0 and got[0][1, 5] == 1
    assert np.isfinite(got[2][:2]).all() and np.isfinite(got[3][:2]).all()


def test_gelu_float32_matches_math_erf():
    # The float32 kernels take their own erf; float64 is checked against PyTorch above.
    x = ad.Variable("x")
    values = np.concatenate([np.linspace(-10, 10, 4001), [0.0, 1e-30, -1e-30, 30.0, -30.0]])
    (got,) = _run([ad.gelu_op(x)], {x: values.astype(np.float32)}, "float32")
    grid = values.astype(np.float32).astype(np.float64)
    want = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in grid])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    g = ad.Variable("g")
    nan = np.float32([np.nan, 1.0])
    got = _run([ad.gelu_op(x), *ad.gradients(ad.gelu_op(x) * g, [x])], {x: nan, g: nan[::-1]},
               "float32")
    assert np.isnan(got[0][0]) and np.isnan(got[1][0]) and not np.isnan(got[0][1])


# ---------------------------------------------------------------- broadcasting
BROADCASTS = [((2, 1, 5), (1, 3, 1)), ((1, 3, 1), (2, 1, 5)), ((2, 1, 4, 1), (3, 1, 5)),
              ((3, 1, 5), (2, 1, 4, 1)), ((4, 5), (2, 3, 1, 5)), ((1, 1, 1), (2, 3, 4))]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("shape_a, shape_b", BROADCASTS)
def test_binary_operators_broadcast_both_ways_with_gradients(op, shape_a, shape_b):
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=shape_a), rng.uniform(0.5, 1.5, size=shape_b)
    ours = {"add": ad.add_op, "sub": ad.sub_op, "mul": ad.mul_op, "div": ad.div_op}[op]
    theirs = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
    _against_torch(ours, theirs, [a, b])


# ---------------------------------------------------------------- bad calls
def test_bad_axis_names_node_shape_and_axis():
    x = ad.Variable("scores")
    node = ad.softmax_op(x, axis=3)
    with pytest.raises(ShapeError, match=r"Softmax\(scores, 3\).*axis 3.*\(2, 3, 4\)"):
        ad.Executor([node]).run({x: np.zeros((2, 3, 4))})
    with pytest.raises(ShapeError, match=r"LogSoftmax\(scores, -3\).*\(2, 3\)"):
        ad.Executor([ad.logsoftmax_op(x, -3)]).run({x: np.zeros((2, 3))})
    with pytest.raises(ArgumentTypeError, match=r"Softmax\(scores\): axis must be an int"):
        ad.softmax_op(x, axis=1.0)
    with pytest.raises(ShapeError, match=r"Softmax\(scores, 0, causal\): a causal softmax "
                                         r"runs along the last axis.*\(2, 3\)"):
        ad.Executor([ad.softmax_op(x, 0, causal=True)]).run({x: np.zeros((2, 3))})


def test_layernorm_parameter_of_the_wrong_shape_names_it():
    x, gamma, beta = ad.Variable("x"), ad.Variable("gamma"), ad.Variable("beta")
    node = ad.layernorm_op(x, gamma, beta)
    with pytest.raises(ShapeError, match=r"LayerNorm\(x\): gamma must have shape \(5,\).*"
                                         r"x \(2, 5\), gamma \(4,\)"):
        ad.Executor([node]).run({x: np.zeros((2, 5)), gamma: np.zeros(4), beta: np.zeros(5)})
    with pytest.raises(ArgumentError, match=r"LayerNorm\(x\): eps must be positive"):
        ad.layernorm_op(x, gamma, beta, eps=0.0)


def test_unknown_gelu_approximation_and_short_scores_are_named():
    x = ad.Variable("h")
    with pytest.raises(ArgumentError, match=r"Gelu\(h\): approximate must be 'none' or 'tanh'"):
        ad.gelu_op(x, approximate="erf")
    with pytest.raises(ShapeError, match=r"CausalMask\(h\).*\(5,\)"):
        ad.Executor([ad.causal_mask_op(x)]).run({x: np.zeros(5)})


def _float32_formula(formula, values: np.ndarray) -> np.ndarray:
    """``formula`` (an expression builder of ``fastmath``) applied to float32 ``values`` in
    a kernel of its own."""
    import tvm
    from tvm import te

    from dlsys.kernels.build import make_target

    a = te.placeholder(values.shape, "float32", name="A")
    out = te.compute(values.shape, lambda i: formula(a[i]), name="B")
    kernel = tvm.tirx.build(te.create_prim_func([a, out]), target=make_target("llvm"))
    result = tvm.runtime.tensor(np.zeros_like(values))
    kernel(tvm.runtime.tensor(values), result)
    return result.numpy().astype(np.float64)


@pytest.mark.parametrize("name", ["exp", "normal_cdf", "tanh"])
def test_float32_exp_tanh_and_normal_cdf_match_math(name):
    # The vectorised float32 formulas of dlsys.kernels.elementwise.fastmath, against Python's
    # math in float64, over the whole range and at inf, -inf and NaN.
    from dlsys.kernels.elementwise import fastmath

    values = np.concatenate([np.linspace(-120, 100, 20001), np.linspace(-9, 9, 20001),
                             [np.inf, -np.inf, 0.0, 1e-30]]).astype(np.float32)
    if name == "exp":
        want = np.array([math.exp(v) if v < 89 else math.inf for v in values.astype(float)])
        want[want > np.finfo(np.float32).max] = np.inf  # overflows float32
    elif name == "tanh":
        want = np.tanh(values.astype(float))
    else:
        want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in values.astype(float)])
    got = _float32_formula(getattr(fastmath, name), values)
    normal = np.abs(want) > 1e-30  # far from float32's denormals
    # Phi's tail exp(-x**2 / 2) turns the rounding of x**2 / 2 (float32, 6e-8 relative)
    # into about x**2 / 2 * 6e-8 of its own; exp has no such factor.
    rtol = 1e-6 + (1.5e-7 * values.astype(float) ** 2 if name == "normal_cdf" else 0)
    with np.errstate(invalid="ignore"):  # inf / inf where exp overflows, as it should
        error = np.where(got == want, 0.0, np.abs(got / want - 1))[normal]
    assert (error <= np.broadcast_to(rtol, values.shape)[normal]).all(), np.nanmax(error)
    np.testing.assert_allclose(got[~normal], want[~normal], rtol=0, atol=1e-30)
    assert np.isnan(_float32_formula(getattr(fastmath, name), np.float32([np.nan]))).all()
