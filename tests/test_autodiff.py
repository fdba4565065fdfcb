"""Reverse-mode gradients: each operator's adjoint against central finite differences.

Everything runs in float64 through the executor (so the gradient graphs' own shape rules,
memory plan and kernels are exercised too). Central differences with eps = 1e-6 have a
truncation error around eps**2 and a rounding error around 1e-16 / eps = 1e-10, so
analytic and numerical gradients must agree to rtol = 1e-6, atol = 1e-7.
"""

from __future__ import annotations

import numpy as np
import pytest
from graph_gen import numerical_gradient, numpy_eval

from dlsys import autodiff as ad
from dlsys.errors import GradientError
from dlsys.ops import ELEMENTWISE_OPS, expand_op, expandmean_op

RTOL, ATOL = 1e-6, 1e-7


def _away_from_zero(rng, shape):
    """Values at least 0.1 from 0, so that relu's kink is never inside a finite difference."""
    values = rng.uniform(0.1, 1.5, size=shape)
    return values * rng.choice([-1.0, 1.0], size=shape)


def check_gradients(build, shapes, constants=(), seed=0, values=None):
    """Gradients of ``sum(build(*inputs) * R)`` for a random fixed ``R`` against finite
    differences. A random upstream weight, not all ones, so that an adjoint that swaps or
    sums the wrong elements cannot pass by symmetry. ``constants`` are input positions that
    get no gradient (labels, shape donors): their gradient must be exactly zero."""
    rng = np.random.default_rng(seed)
    inputs = [ad.Variable(f"x{i}") for i in range(len(shapes))]
    out = build(*inputs)
    feeds = {node: (values[i] if values and values[i] is not None
                    else _away_from_zero(rng, shape))
             for i, (node, shape) in enumerate(zip(inputs, shapes))}
    out_shape = numpy_eval([out], feeds)[0].shape
    weight = ad.Variable("R")
    feeds[weight] = rng.normal(size=out_shape)
    loss = out * weight
    grads = ad.gradients(loss, inputs)
    executor = ad.Executor([loss, *grads], dtype="float64")
    forward = ad.Executor([loss], dtype="float64")
    results = executor.run(feeds, convert_to_numpy_ret_vals=True)

    def objective():
        return forward.run(feeds, convert_to_numpy_ret_vals=True)[0].sum()

    for i, (node, analytic) in enumerate(zip(inputs, results[1:])):
        assert analytic.shape == feeds[node].shape, node.name
        if i in constants:
            assert not analytic.any(), f"{node.name} should get a zero gradient"
            continue
        numeric = numerical_gradient(objective, feeds[node])
        np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=node.name)


GRADIENT_CASES = {
    "add": (ad.add_op, [(3, 4), (3, 4)], ()),
    "add_bias_row": (ad.add_op, [(3, 4), (4,)], ()),
    "add_left_broadcast": (ad.add_op, [(1, 4), (3, 4)], ()),
    "add_both_broadcast": (ad.add_op, [(3, 1), (2, 1, 4)], ()),
    "add_same_input": (lambda a: a + a, [(2, 3)], ()),
    "mul": (ad.mul_op, [(3, 4), (3, 4)], ()),
    "mul_broadcast": (ad.mul_op, [(2, 3, 4), (3, 1)], ()),
    "mul_square": (lambda a: a * a, [(2, 3)], ()),
    "add_const": (lambda a: a + 1.5, [(2, 3)], ()),
    "mul_const": (lambda a: a * -2.5, [(2, 3)], ()),
    "matmul": (lambda a, b: ad.matmul_op(a, b), [(3, 4), (4, 2)], ()),
    "matmul_tA": (lambda a, b: ad.matmul_op(a, b, True, False), [(4, 3), (4, 2)], ()),
    "matmul_tB": (lambda a, b: ad.matmul_op(a, b, False, True), [(3, 4), (2, 4)], ()),
    "matmul_tAtB": (lambda a, b: ad.matmul_op(a, b, True, True), [(4, 3), (2, 4)], ()),
    "relu": (ad.relu_op, [(3, 4)], ()),
    "relu_gradient": (ad.relu_gradient_op, [(3, 4), (3, 4)], ()),
    "reducesumaxiszero": (ad.reducesumaxiszero_op, [(3, 4)], ()),
    "reducesumaxiszero_3d": (ad.reducesumaxiszero_op, [(2, 3, 4)], ()),
    "broadcastto_leading": (ad.broadcastto_op, [(4,), (3, 4)], (1,)),
    "broadcastto_size1": (ad.broadcastto_op, [(3, 1), (3, 4)], (1,)),
    "broadcastto_both": (ad.broadcastto_op, [(1, 4), (2, 3, 4)], (1,)),
    "broadcastto_same": (ad.broadcastto_op, [(3, 4), (3, 4)], (1,)),
    "reducesumto_leading": (ad.reducesumto_op, [(3, 4), (4,)], (1,)),
    "reducesumto_size1": (ad.reducesumto_op, [(2, 3, 4), (3, 1)], (1,)),
    "reducesumto_same": (ad.reducesumto_op, [(3, 4), (3, 4)], (1,)),
    "oneslike": (lambda a: ad.oneslike_op(a) * a, [(2, 3)], ()),
    "zeroslike": (lambda a: ad.zeroslike_op(a) + a, [(2, 3)], ()),
    "mlp_layer": (lambda x, w, b: ad.relu_op(ad.matmul_op(x, w) + b), [(5, 4), (4, 3), (3,)],
                  ()),
    # Node operators, numbers on either side; binary ones broadcast like add and mul.
    "sub": (lambda a, b: a - b, [(3, 4), (3, 4)], ()),
    "sub_broadcast": (lambda a, b: a - b, [(3, 1), (2, 1, 4)], ()),
    "sub_same_input": (lambda a: a - a * a, [(2, 3)], ()),
    "neg": (lambda a: -a, [(2, 3)], ()),
    "sub_const": (lambda a: a - 1.5, [(2, 3)], ()),
    "const_sub": (lambda a: 2 - a, [(2, 3)], ()),
    "matmul_operator": (lambda a, b: a @ b, [(3, 4), (4, 2)], ()),
    "div_const": (lambda a: a / 3, [(2, 3)], ()),
    "exp": (ad.exp_op, [(3, 4)], ()),
    "tanh": (ad.tanh_op, [(3, 4)], ()),
    "tanh_of_matmul": (lambda x, w: ad.tanh_op(x @ w) / 2 - 1, [(5, 4), (4, 3)], ()),
    # Sums and means over given axes: their adjoints spread the gradient back.
    "sum_all": (ad.sum_op, [(3, 4)], ()),
    "sum_all_3d": (ad.sum_op, [(2, 3, 4)], ()),
    "sum_axis0": (lambda a: ad.sum_op(a, 0), [(3, 4)], ()),
    "sum_axis1": (lambda a: ad.sum_op(a, axes=1), [(3, 4)], ()),
    "sum_middle": (lambda a: ad.sum_op(a, axes=(1,)), [(2, 3, 4)], ()),
    "sum_negative_axes": (lambda a: ad.sum_op(a, axes=(-1, 0)), [(2, 3, 4)], ()),
    "sum_keepdims": (lambda a: ad.sum_op(a, axes=(0, 2), keepdims=True), [(2, 3, 4)], ()),
    "sum_all_keepdims": (lambda a: ad.sum_op(a, keepdims=True), [(2, 3)], ()),
    "sum_no_axes": (lambda a: ad.sum_op(a, axes=()), [(2, 3)], ()),
    "sum_size1_keepdims": (lambda a: ad.sum_op(a, axes=1, keepdims=True), [(3, 1)], ()),
    "mean_all": (ad.mean_op, [(3, 4)], ()),
    "mean_axis1": (lambda a: ad.mean_op(a, axes=1), [(3, 4)], ()),
    "mean_negative_axes": (lambda a: ad.mean_op(a, axes=(-3, -1)), [(2, 3, 4)], ()),
    "mean_keepdims": (lambda a: ad.mean_op(a, axes=-2, keepdims=True), [(2, 3, 4)], ()),
    "sum_then_broadcast": (lambda a, b: ad.sum_op(a, axes=1, keepdims=True) * b,
                           [(3, 4), (3, 4)], ()),
    "sum_of_sum": (lambda a: ad.sum_op(ad.mean_op(a, axes=0), axes=-1), [(2, 3, 4)], ()),
    # The adjoints themselves (their own gradient is the sum or mean again); x lends a shape.
    "expand_sum": (lambda g, x: expand_op(g, x, axes=1), [(2, 4), (2, 3, 4)], (1,)),
    "expand_sum_all": (lambda g, x: expand_op(g, x), [(1,), (2, 3)], (1,)),
    "expand_mean_keepdims": (lambda g, x: expandmean_op(g, x, axes=(0, -1), keepdims=True),
                             [(1, 3, 1), (2, 3, 4)], (1,)),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_operator_gradient_matches_finite_differences(case):
    build, shapes, constants = GRADIENT_CASES[case]
    check_gradients(build, shapes, constants)


def _domain_values(op, shape, seed=0):
    """Inputs for ``op``'s test: positive (0.5 to 1.5) where the operator declares it needs
    them so (``positive_inputs``), else None for check_gradients' default."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 1.5, size=shape) if i in op.positive_inputs else None
            for i in range(op.arity)]


@pytest.mark.parametrize("op", ELEMENTWISE_OPS, ids=lambda op: op.name)
def test_every_elementwise_operator_gradient_matches_finite_differences(op):
    # Picked up from the registry: a new elementwise operator is checked by being registered.
    check_gradients(lambda *inputs: op.example(list(inputs)), [(3, 4)] * op.arity,
                    values=_domain_values(op, (3, 4)))


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    labels = np.eye(4)[rng.integers(0, 4, 5)]
    check_gradients(ad.softmaxcrossentropy_op, [(5, 4), (5, 4)], constants=(1,),
                    values=[rng.normal(size=(5, 4)) * 3, labels])


def test_softmax_cross_entropy_gradient_is_exact():
    # The adjoint must be the closed form, with the upstream gradient folded in, not an
    # approximation: compare to (softmax(y) - y_) / batch * upstream at rounding precision.
    rng = np.random.default_rng(2)
    logits, labels = ad.Variable("y"), ad.Variable("y_")
    upstream = 0.75
    loss = ad.softmaxcrossentropy_op(logits, labels) * upstream
    (grad,) = ad.gradients(loss, [logits])
    y = rng.normal(size=(6, 5)) * 4
    y_ = np.eye(5)[rng.integers(0, 5, 6)]
    (value,) = ad.Executor([grad], dtype="float64").run({logits: y, labels: y_},
                                                        convert_to_numpy_ret_vals=True)
    expected = (ad.softmax_func(y) - y_) / 6 * upstream
    np.testing.assert_allclose(value, expected, rtol=1e-13, atol=1e-16)


def test_fan_out_sums_partial_adjoints():
    # Both inputs feed several paths; each adjoint must be the sum over all of them.
    check_gradients(lambda a, b: ad.matmul_op(a, b) * 2.0 + ad.matmul_op(a * a, b)
                    + ad.relu_op(ad.matmul_op(a, b)), [(3, 3), (3, 3)])


def test_softmax_has_no_second_derivative_and_the_error_names_it():
    x, labels = ad.Variable("x"), ad.Variable("y_")
    loss = ad.softmaxcrossentropy_op(ad.softmax_op(x), labels)
    (grad,) = ad.gradients(loss, [x])
    with pytest.raises(GradientError) as caught:
        ad.gradients(grad, [x])
    assert "SoftmaxGrad" in str(caught.value)


def test_second_derivative_of_the_loss_raises_naming_the_node():
    x, w, labels = ad.Variable("x"), ad.Variable("w"), ad.Variable("y_")
    loss = ad.softmaxcrossentropy_op(ad.matmul_op(x, w), labels)
    (grad_w,) = ad.gradients(loss, [w])
    with pytest.raises(GradientError) as caught:
        ad.gradients(grad_w, [w])
    assert "SoftmaxXEntropyGrad" in str(caught.value)


def test_max_pool_gradient_has_no_gradient_and_the_error_names_it():
    # Convolutions have every derivative now; max pooling's adjoint has none of its own.
    x = ad.Variable("img")
    (grad,) = ad.gradients(ad.maxpool2d_op(x, 2), [x])
    with pytest.raises(GradientError, match=r"MaxPool2dGrad\(img, "):
        ad.gradients(grad, [x])


def test_gradient_of_an_unrelated_node_is_zeros_of_its_shape():
    x, w, unrelated = ad.Variable("x"), ad.Variable("w"), ad.Variable("u")
    out = ad.matmul_op(x, w)
    grad_w, grad_u = ad.gradients(out, [w, unrelated])
    # Asking for u's gradient makes u part of the graph: it is fed for its shape only.
    feeds = {x: np.ones((2, 3)), w: np.ones((3, 4)), unrelated: np.full((5, 1), 7.0)}
    got_w, got_u = ad.Executor([grad_w, grad_u], dtype="float64").run(
        feeds, convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(got_u, np.zeros((5, 1)))
    np.testing.assert_array_equal(got_w, np.full((3, 4), 2.0))


def test_gradient_of_labels_is_zeros():
    logits, labels = ad.Variable("y"), ad.Variable("y_")
    loss = ad.softmaxcrossentropy_op(logits, labels)
    (grad,) = ad.gradients(loss, [labels])
    _, value = ad.Executor([loss, grad], dtype="float64").run(
        {logits: np.ones((3, 2)), labels: np.full((3, 2), 0.5)}, convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(value, np.zeros((3, 2)))


def test_conv2d_forward_matches_numpy():
    rng = np.random.default_rng(3)
    x, f = ad.Variable("img"), ad.Variable("filt")
    out = ad.conv2d_op(x, f)
    feeds = {x: rng.normal(size=(2, 3, 6, 5)), f: rng.normal(size=(4, 3, 3, 2))}
    (value,) = ad.Executor([out], dtype="float64").run(feeds, convert_to_numpy_ret_vals=True)
    assert value.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(value, numpy_eval([out], feeds)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flag", ["no", "", 2, None, 1.0])
def test_matmul_transpose_flags_must_be_bools(flag):
    from dlsys.errors import ArgumentTypeError

    a, b = ad.Variable("a"), ad.Variable("b")
    with pytest.raises(ArgumentTypeError, match="trans_A must be a bool"):
        ad.matmul_op(a, b, flag, False)


# Operators whose inputs must be positive, with numbers on either side of the Node operator.
POSITIVE_CASES = {
    "div": (lambda a, b: a / b, [(3, 4), (3, 4)]),
    "div_broadcast": (lambda a, b: a / b, [(2, 3, 4), (3, 1)]),
    "div_broadcast_left": (lambda a, b: a / b, [(4,), (3, 4)]),
    "div_same_input": (lambda a: (a * 3.0) / a, [(2, 3)]),
    "const_div": (lambda a: 1 / a, [(2, 3)]),
    "const_div_negative": (lambda a: -2.5 / a, [(2, 3)]),
    "log": (ad.log_op, [(3, 4)]),
    "log_of_sum": (lambda a: ad.log_op(ad.sum_op(a, axes=-1)), [(3, 4)]),
    "logsumexp_by_hand": (lambda a: ad.log_op(ad.sum_op(ad.exp_op(a), axes=1, keepdims=True)),
                          [(3, 4)]),
}


@pytest.mark.parametrize("case", sorted(POSITIVE_CASES))
def test_positive_domain_gradient_matches_finite_differences(case):
    build, shapes = POSITIVE_CASES[case]
    rng = np.random.default_rng(4)
    check_gradients(build, shapes, values=[rng.uniform(0.5, 1.5, size=s) for s in shapes])
