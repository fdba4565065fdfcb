"""The arithmetic of graph nodes (``a - b``, ``-a``, ``a / b``, ``a @ b``, numbers on either
side), its bad inputs, and the new unary operators joining a matmul's kernel."""

from __future__ import annotations

import numpy as np
import pytest
from graph_gen import numpy_eval

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.ops import ELEMENTWISE_OPS

# (expression over nodes a and b, the same over numpy arrays); a is (3, 4), b is (4,).
EXPRESSIONS = {
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "rsub_broadcast": (lambda a, b: b - a, lambda a, b: b - a),
    "neg": (lambda a, b: -a, lambda a, b: -a),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "rdiv_broadcast": (lambda a, b: b / a, lambda a, b: b / a),
    "sub_number": (lambda a, b: a - 2, lambda a, b: a - 2),
    "number_sub": (lambda a, b: 2 - a, lambda a, b: 2 - a),
    "div_number": (lambda a, b: a / 3, lambda a, b: a / 3),
    "number_div": (lambda a, b: 1 / a, lambda a, b: 1 / a),
    "numpy_scalar_sub": (lambda a, b: np.float32(0.5) - a, lambda a, b: 0.5 - a),
    "numpy_scalar_div": (lambda a, b: np.float64(3.0) / a, lambda a, b: 3.0 / a),
    "numpy_scalar_mul": (lambda a, b: np.float64(-1.5) * a, lambda a, b: -1.5 * a),
    "chain": (lambda a, b: (1 - a / b) * -a + 0.25, lambda a, b: (1 - a / b) * -a + 0.25),
}


@pytest.mark.parametrize("case", sorted(EXPRESSIONS))
def test_node_arithmetic_rounds_as_numpy(case):
    # Every expression is elementwise, so in float64 each element must be numpy's exactly:
    # a - c runs as a + (-c) and c - a as (-a) + c, both exact rewrites in IEEE arithmetic.
    build, expected = EXPRESSIONS[case]
    rng = np.random.default_rng(0)
    a, b = ad.Variable("a"), ad.Variable("b")
    feeds = {a: rng.uniform(0.5, 2.0, (3, 4)), b: rng.uniform(0.5, 2.0, (4,))}
    out = build(a, b)
    executor = ad.Executor([out], dtype="float64")
    (got,) = executor.run({p: feeds[p] for p in executor.placeholders},
                          convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(got, expected(feeds[a], feeds[b]))


def test_matmul_operator_is_matmul_op():
    rng = np.random.default_rng(1)
    a, b = ad.Variable("a"), ad.Variable("b")
    out = a @ b
    assert out.op is ad.matmul_op and not out.attrs["trans_A"] and not out.attrs["trans_B"]
    feeds = {a: rng.normal(size=(5, 3)), b: rng.normal(size=(3, 2))}
    (got,) = ad.Executor([out], dtype="float64").run(feeds, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got, feeds[a] @ feeds[b], rtol=1e-12)


@pytest.mark.parametrize("divisor", [0, 0.0, -0.0, np.float32(0), 1e-50])
def test_division_by_a_zero_constant_is_refused(divisor):
    a = ad.Variable("activations")
    with pytest.raises(ArgumentError, match=r"activations.*cannot divide by the constant"):
        a / divisor


def test_zero_divided_by_a_tensor_is_fine():
    a = ad.Variable("a")
    (got,) = ad.Executor([0 / a], dtype="float64").run({a: np.array([2.0, -4.0])},
                                                        convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(got, [0.0, -0.0])


BAD_OPERANDS = [
    (lambda a: a - "2", ArgumentTypeError, r"\(weights - \.\.\.\).*'2'"),
    (lambda a: "2" - a, ArgumentTypeError, r"\(\.\.\. - weights\).*'2'"),
    (lambda a: a / "2", ArgumentTypeError, r"weights.*'2'"),
    (lambda a: "2" / a, ArgumentTypeError, r"weights.*'2'"),
    (lambda a: a - None, ArgumentTypeError, r"weights.*None"),
    (lambda a: a / [1, 2], ArgumentTypeError, r"weights.*\[1, 2\]"),
    (lambda a: a - float("nan"), ArgumentError, r"weights.*nan"),
    (lambda a: 1e300 / a, ArgumentError, r"weights.*1e\+300"),
    (lambda a: a @ 2, ArgumentTypeError, r"weights @ .*int"),
    (lambda a: 2 @ a, ArgumentTypeError, r"@ weights.*int"),
    (lambda a: np.ones((2, 2)) @ a, ArgumentTypeError, r"@ weights.*ndarray"),
    # numpy defers to the node instead of building an object array of nodes.
    (lambda a: np.ones(2) * a, ArgumentTypeError, r"weights.*array"),
    (lambda a: np.ones(2) - a, ArgumentTypeError, r"weights.*array"),
    (lambda a: a - True, ArgumentTypeError, r"weights.*True"),
]


@pytest.mark.parametrize("build, error, pattern", BAD_OPERANDS)
def test_bad_operands_name_the_node(build, error, pattern):
    a = ad.Variable("weights")
    with pytest.raises(error, match=pattern):
        build(a)


BAD_CALLS = [
    (lambda a: ad.sum_op(a, axes="0"), ArgumentTypeError, r"Sum\(x1\): axes must be"),
    (lambda a: ad.mean_op(a, axes=(0, 0)), ArgumentError, r"Mean\(x1\): axes \(0, 0\)"),
    (lambda a: ad.sum_op(a, axes=True), ArgumentTypeError, r"Sum\(x1\): axes"),
    (lambda a: ad.sum_op(a, axes=[1.0]), ArgumentTypeError, r"Sum\(x1\): axes"),
    (lambda a: ad.sum_op(a, keepdims="yes"), ArgumentTypeError, r"Sum\(x1\): keepdims"),
    (lambda a: ad.sum_op(np.ones(3)), ArgumentTypeError, r"Sum: x must be a graph Node"),
    (lambda a: ad.exp_op(3.0), ArgumentTypeError, r"Exp: input 0 must be a graph Node"),
    (lambda a: ad.tanh_op(a, a), ArgumentTypeError, r"Tanh takes 1 input"),
    (lambda a: ad.div_op(a, 2.0), ArgumentTypeError, r"Div: input 1 must be a graph Node"),
    (lambda a: ad.sub_op("a", a), ArgumentTypeError, r"Sub: input 0"),
]


@pytest.mark.parametrize("build, error, pattern", BAD_CALLS)
def test_bad_operator_arguments_name_operator_and_argument(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build(ad.Variable("x1"))


UNARY = [op for op in ELEMENTWISE_OPS if op.arity == 1 and op.kernel_inputs(op.example(
    [ad.Variable("x")]))]


@pytest.mark.parametrize("op", UNARY, ids=lambda op: op.name)
def test_every_unary_operator_joins_a_matmul_kernel(op):
    # Picked up from the registry: a unary elementwise operator after a matmul runs in the
    # matmul's kernel, and computes what its numpy reference says.
    rng = np.random.default_rng(2)
    x, w = ad.Variable("x"), ad.Variable("w")
    out = op.example([x @ w])
    # Positive operands give a positive product, inside every declared domain.
    feeds = {x: rng.uniform(0.1, 1.0, (7, 5)), w: rng.uniform(0.1, 1.0, (5, 3))}
    executor = ad.Executor([out], dtype="float64")
    (got,) = executor.run(feeds, convert_to_numpy_ret_vals=True)
    assert executor.kernel_calls == 1
    np.testing.assert_allclose(got, numpy_eval([out], feeds)[0], rtol=1e-12, atol=1e-14)


def test_a_chain_of_new_operators_runs_in_one_kernel():
    x, w = ad.Variable("x"), ad.Variable("w")
    out = 1 - ad.tanh_op(x @ w) / 2
    rng = np.random.default_rng(3)
    feeds = {x: rng.normal(size=(6, 4)), w: rng.normal(size=(4, 5))}
    executor = ad.Executor([out], dtype="float64")
    (got,) = executor.run(feeds, convert_to_numpy_ret_vals=True)
    (fused,) = executor._prepared.steps
    assert [label for label, *_ in fused.epilogue] == ["tanh", "div_const", "neg", "add_const"]
    np.testing.assert_allclose(got, 1 - np.tanh(feeds[x] @ feeds[w]) / 2, rtol=1e-12)
