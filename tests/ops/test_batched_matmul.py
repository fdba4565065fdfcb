"""The matmul on operands of rank >= 3 (dlsys/ops/linalg.py, dlsys/kernels/matmul/): values
against numpy.matmul, gradients against central finite differences in float64 and against
PyTorch, the kernels chosen (a stack times a matrix runs the 2-D kernel over all its rows,
and so does its weight gradient), fusion of epilogues, constant packing, and the named
shape errors."""

from __future__ import annotations

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys.errors import ShapeError
from dlsys.graph import find_topo_sort
from dlsys.ops import matmul_op, relu_op
from dlsys.ops.placeholder import Parameter
from dlsys.passes import shape_inference

# (shape of A, trans_A, shape of B, trans_B): broadcast batches, a matrix shared by a batch
# on either side, 4-D attention operands, and the transposes.
CASES = [
    ((3, 1, 7, 5), False, (1, 5, 5, 7), False),
    ((3, 1, 5, 7), True, (1, 5, 7, 5), True),
    ((2, 7, 5), False, (5, 3), False),
    ((2, 7, 5), False, (3, 5), True),
    ((2, 3, 7, 5), False, (5, 4), False),
    ((2, 5, 7), True, (5, 3), False),
    ((7, 5), False, (4, 5, 3), False),
    ((5, 7), True, (4, 3, 5), True),
    ((2, 3, 7, 5), False, (2, 3, 7, 5), True),
    ((2, 3, 7, 7), False, (2, 3, 7, 5), False),
    ((4, 7, 5), True, (4, 7, 6), False),
    ((1, 6, 5), False, (3, 5, 2), False),
]


def _op(x: np.ndarray, trans: bool) -> np.ndarray:
    return np.swapaxes(x, -1, -2) if trans else x


def _run(nodes, feeds, dtype="float64"):
    return ad.Executor(nodes, dtype=dtype).run(feeds, convert_to_numpy_ret_vals=True)


@pytest.mark.parametrize("shape_a,trans_a,shape_b,trans_b", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_numpy_matmul(shape_a, trans_a, shape_b, trans_b, dtype):
    rng = np.random.default_rng(len(shape_a) * 10 + len(shape_b))
    a_value = rng.standard_normal(shape_a).astype(dtype)
    b_value = rng.standard_normal(shape_b).astype(dtype)
    a, b = ad.Variable("a"), ad.Variable("b")
    node = matmul_op(a, b, trans_a, trans_b)
    out = _run([node], {a: a_value, b: b_value}, dtype)[0]
    expected = np.matmul(_op(a_value, trans_a), _op(b_value, trans_b))
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(node.op.reference(node, a_value, b_value), expected, rtol=1e-12)


def _gradients(shape_a, trans_a, shape_b, trans_b, a_value, b_value, upstream):
    a, b, weight = ad.Variable("a"), ad.Variable("b"), ad.Variable("R")
    loss = ad.sum_op(matmul_op(a, b, trans_a, trans_b) * weight)
    grads = ad.gradients(loss, [a, b])
    return loss, (a, b, weight), _run(grads, {a: a_value, b: b_value, weight: upstream})


@pytest.mark.parametrize("shape_a,trans_a,shape_b,trans_b", CASES[:8])
def test_gradients_match_finite_differences(shape_a, trans_a, shape_b, trans_b):
    rng = np.random.default_rng(7)
    values = [rng.standard_normal(shape_a), rng.standard_normal(shape_b)]
    upstream = rng.standard_normal(np.matmul(_op(values[0], trans_a),
                                             _op(values[1], trans_b)).shape)
    loss, (a, b, weight), analytic = _gradients(shape_a, trans_a, shape_b, trans_b, *values,
                                                upstream)
    forward = ad.Executor([loss], dtype="float64")
    eps = 1e-6
    for which, value in enumerate(values):
        assert analytic[which].shape == value.shape
        numeric = np.zeros_like(value)
        for index in np.ndindex(*value.shape):
            for sign in (1, -1):
                shifted = [v.copy() for v in values]
                shifted[which][index] += sign * eps
                numeric[index] += sign * forward.run(
                    {a: shifted[0], b: shifted[1], weight: upstream},
                    convert_to_numpy_ret_vals=True)[0][0]
        np.testing.assert_allclose(analytic[which], numeric / (2 * eps), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape_a,trans_a,shape_b,trans_b", CASES)
def test_gradients_match_pytorch(shape_a, trans_a, shape_b, trans_b):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(shape_a), rng.standard_normal(shape_b)]
    ta, tb = (torch.tensor(v, requires_grad=True) for v in values)
    out = torch.matmul(ta.transpose(-1, -2) if trans_a else ta,
                       tb.transpose(-1, -2) if trans_b else tb)
    upstream = rng.standard_normal(tuple(out.shape))
    (out * torch.tensor(upstream)).sum().backward()
    _, _, analytic = _gradients(shape_a, trans_a, shape_b, trans_b, *values, upstream)
    np.testing.assert_allclose(analytic[0], ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(analytic[1], tb.grad.numpy(), rtol=1e-10, atol=1e-12)


def _program(nodes, feeds):
    executor = ad.Executor(nodes, dtype="float64")
    executor.run(feeds)
    return executor.program()


@pytest.mark.parametrize("trans_b", [False, True])
def test_a_stack_times_a_matrix_runs_the_2d_kernel_and_so_does_its_weight_gradient(trans_b):
    rng = np.random.default_rng(0)
    x, w, weight = ad.Variable("x"), ad.Variable("W"), ad.Variable("R")
    x_value = rng.standard_normal((2, 3, 7, 5))
    w_value = rng.standard_normal((4, 5) if trans_b else (5, 4))
    upstream = rng.standard_normal((2, 3, 7, 4))
    y = matmul_op(x, w, False, trans_b)
    grads = ad.gradients(ad.sum_op(y * weight), [x, w])
    feeds = {x: x_value, w: w_value, weight: upstream}
    program = _program([y, *grads], feeds)
    kinds = {step.output: step.kernel.kind for step in program.steps if step.kernel}
    assert kinds[y] == "matmul"
    assert kinds[grads[1]] == "matmul"  # one 2-D product over the 42 rows, no batched sum
    assert "batched_matmul" not in kinds.values() and "reduce_sum_to" not in kinds.values()
    rows = x_value.reshape(-1, 5)
    expected_w = rows.T @ upstream.reshape(-1, 4)
    out = _run([y, *grads], feeds)
    np.testing.assert_allclose(out[2], expected_w.T if trans_b else expected_w, rtol=1e-12)


def test_epilogues_fuse_into_a_stack_times_a_matrix():
    rng = np.random.default_rng(1)
    x, w, residual = ad.Variable("x"), ad.Variable("W"), ad.Variable("r")
    feeds = {x: rng.standard_normal((2, 7, 5)), w: rng.standard_normal((4, 5)),
             residual: rng.standard_normal((2, 7, 4))}
    y = relu_op(matmul_op(x, w, False, True) + residual)
    executor = ad.Executor([y], dtype="float64")
    out = executor.run(feeds, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_allclose(out, np.maximum(feeds[x] @ feeds[w].T + feeds[residual], 0),
                               rtol=1e-12)
    assert executor.kernel_calls == 1


def test_epilogues_fuse_into_a_batched_product():
    rng = np.random.default_rng(2)
    q, k = ad.Variable("q"), ad.Variable("k")
    feeds = {q: rng.standard_normal((2, 3, 7, 5)), k: rng.standard_normal((2, 3, 7, 5))}
    y = relu_op(matmul_op(q, k, False, True) * 0.5)
    executor = ad.Executor([y], dtype="float64")
    out = executor.run(feeds, convert_to_numpy_ret_vals=True)[0]
    expected = np.maximum(feeds[q] @ np.swapaxes(feeds[k], -1, -2) * 0.5, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert executor.kernel_calls == 1


def test_constant_weight_is_packed_for_a_stack_times_a_matrix():
    rng = np.random.default_rng(4)
    x = ad.Variable("x")
    w_value = rng.standard_normal((6, 5)).astype("float32")
    w = Parameter(w_value, "W")
    y = matmul_op(x, w, False, True)
    executor = ad.Executor([y], constants=[w])
    x_value = rng.standard_normal((3, 7, 5)).astype("float32")
    for _ in range(2):
        out = executor.run({x: x_value}, convert_to_numpy_ret_vals=True)[0]
        np.testing.assert_allclose(out, x_value @ w_value.T, rtol=1e-5, atol=1e-5)
    kinds = [step.kernel.kind for step in executor.program().steps if step.kernel]
    assert "matmul_prepacked" in kinds


@pytest.mark.parametrize("shape_a,shape_b,texts", [
    ((2, 7, 5), (3, 5, 4), ["batch dimensions (2,) and (3,) do not broadcast"]),
    ((2, 7, 5), (2, 6, 4), ["inner dimensions 5 and 6 differ"]),
    ((7,), (2, 7, 4), ["must be a matrix or a stack of matrices"]),
])
def test_shape_errors_name_node_and_shapes(shape_a, shape_b, texts):
    a, b = ad.Variable("a"), ad.Variable("b")
    node = matmul_op(a, b)
    with pytest.raises(ShapeError) as caught:
        shape_inference.infer_shapes(find_topo_sort([node]), {a: shape_a, b: shape_b})
    message = str(caught.value)
    for text in [*texts, "MatMul(a, b)", str(shape_a), str(shape_b)]:
        assert text in message


def test_second_derivatives_through_a_summed_gradient_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    values = [rng.standard_normal((3, 1, 7, 5)), rng.standard_normal((1, 5, 5, 7))]
    upstream, probe = rng.standard_normal((3, 5, 7, 7)), rng.standard_normal((3, 1, 7, 5))
    ta, tb = (torch.tensor(v, requires_grad=True) for v in values)
    (grad_a,) = torch.autograd.grad((torch.matmul(ta, tb) * torch.tensor(upstream)).sum(), ta,
                                    create_graph=True)
    (expected,) = torch.autograd.grad((grad_a * torch.tensor(probe)).sum(), tb)
    a, b, weight, s = (ad.Variable(n) for n in ("a", "b", "R", "S"))
    (first,) = ad.gradients(ad.sum_op(matmul_op(a, b) * weight), [a])
    (second,) = ad.gradients(ad.sum_op(first * s), [b])
    out = _run([second], {a: values[0], b: values[1], weight: upstream, s: probe})[0]
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-10, atol=1e-12)
