"""Every kernel builder against numpy, on CPU: odd sizes, the seed tests' sizes, both dtypes."""

import numpy as np
import pytest
import tvm
from kernel_testing import assert_case, large_logit_cases, odd_cases, run_case, seed_cases

from dlsys import tvm_op as op

ODD = odd_cases()
SEED = seed_cases()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ODD, ids=[c.id for c in ODD])
def test_odd_sizes(case, dtype):
    assert_case(case, "llvm", dtype)


@pytest.mark.parametrize("case", SEED, ids=[c.id for c in SEED])
def test_seed_sizes_float32(case):
    assert_case(case, "llvm", "float32")


# float64 on the seed sizes for one kernel of each structure (elementwise, matmul, conv, rows).
SEED64 = [c for c in SEED if c.id.split("(")[0] in ("add", "conv2d", "softmax")
          or c.id.startswith("matmul(500, 700)x(700, 1000)")]


@pytest.mark.parametrize("case", SEED64, ids=[c.id for c in SEED64])
def test_seed_sizes_float64(case):
    assert_case(case, "llvm", "float64")


LARGE = large_logit_cases()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", LARGE, ids=[c.id for c in LARGE])
def test_large_logits_are_finite_and_correct(case, dtype):
    got, _ = run_case(case, "llvm", dtype)
    assert all(np.isfinite(g).all() for g in got), case.id
    assert_case(case, "llvm", dtype)


def test_cross_entropy_of_a_confident_wrong_guess_is_finite():
    # The label's logit sits 2000 below the row maximum: softmax of it underflows to 0, so a
    # kernel that took log(softmax) would return inf; log-sum-exp gives exactly 2000.
    y = np.array([[1000.0, -1000.0]], dtype="float32")
    labels = np.array([[0.0, 1.0]], dtype="float32")
    kernel = op.make_matrix_softmax_cross_entropy((1, 2), "llvm", "llvm", "sce")
    out = tvm.runtime.empty((1,), "float32", tvm.cpu(0))
    kernel(tvm.runtime.tensor(y), tvm.runtime.tensor(labels), out)
    np.testing.assert_allclose(out.numpy(), [2000.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_update_in_place(dtype):
    shape = (37, 41)
    rng = np.random.default_rng(1)
    w, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    kernel = op.make_sgd_update(shape, 0.01, "llvm", "llvm", "sgd", dtype)
    w_tvm = tvm.runtime.tensor(w)
    kernel(w_tvm, tvm.runtime.tensor(g), w_tvm)
    np.testing.assert_allclose(w_tvm.numpy(), w - np.asarray(0.01, dtype) * g, rtol=1e-6)


def test_relu_gradient_is_zero_at_zero():
    # relu'(0) is taken as 0 (the (A > 0) mask), not 1: the mask must be strict.
    a = np.array([-1.0, 0.0, 2.0], dtype="float32")
    g = np.array([5.0, 5.0, 5.0], dtype="float32")
    kernel = op.make_relu_gradient((3,), "llvm", "llvm", "relu_grad")
    out = tvm.runtime.empty((3,), "float32", tvm.cpu(0))
    kernel(tvm.runtime.tensor(a), tvm.runtime.tensor(g), out)
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0, 5.0])


def test_numpy_scalar_constants_are_accepted():
    kernel = op.make_elemwise_mul_by_const((4,), np.float32(0.5), "llvm", "llvm", "half")
    out = tvm.runtime.empty((4,), "float32", tvm.cpu(0))
    kernel(tvm.runtime.tensor(np.full(4, 3.0, "float32")), out)
    np.testing.assert_array_equal(out.numpy(), np.full(4, 1.5))


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 10), (400, 1000)])
def test_loss_with_gradient_kernel_matches_both_kernels_apart(shape):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(shape) * 300).astype("float32")
    labels = np.eye(shape[1], dtype="float32")[rng.integers(0, shape[1], shape[0])]
    upstream = np.array([1.5], dtype="float32")
    shifted = logits.astype("float64") - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    want_loss = np.mean(-(labels * log_softmax).sum(axis=1))
    want_grad = (np.exp(log_softmax) - labels) / shape[0] * upstream[0]
    kernel = op.make_matrix_softmax_cross_entropy_with_gradient(shape, "llvm", "llvm", "f")
    grad, loss = tvm.runtime.empty(shape, "float32"), tvm.runtime.empty((1,), "float32")
    kernel(*(tvm.runtime.tensor(a) for a in (logits, labels, upstream)), grad, loss)
    np.testing.assert_allclose(loss.numpy()[0], want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("build", [
    lambda: op.make_relu((4, 20), "llvm", "llvm", "relu"),
    lambda: op.make_matmul_epilogue((4, 3), False, (3, 20), False, [("relu",)], "llvm", "llvm",
                                    "f"),
], ids=["relu", "matmul+relu"])
def test_relu_kernels_keep_nan(build):
    kernel = build()
    shapes = kernel.arg_shapes
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype("float32") for s in shapes[:-1]]
    args[0][1, 2] = np.nan
    tensors = [tvm.runtime.tensor(a) for a in args] + [tvm.runtime.empty(shapes[-1], "float32")]
    kernel(*tensors)
    out = tensors[-1].numpy()
    assert np.isnan(out[1]).any() and not np.isnan(out[0]).any()


def test_target_options_are_refused_not_ignored():
    from dlsys.errors import ArgumentError

    with pytest.raises(ArgumentError, match="mtriple"):
        op.make_relu((4,), "llvm -mtriple=aarch64-linux-gnu", "llvm", "relu")


def test_fused_matmul_transpose_flags_must_be_bools():
    from dlsys.errors import ArgumentTypeError

    with pytest.raises(ArgumentTypeError, match="transposeA"):
        op.make_matmul_epilogue((3, 3), "no", (3, 3), False, [("relu",)], "llvm", "llvm", "f")


@pytest.mark.parametrize("axes, keepdims, error, pattern", [
    (2, False, "ShapeError", r"reduce_(sum|mean) of shape \(3, 4\).*axis 2 is out of range"),
    ((1, -1), False, "ShapeError", r"name axis 1 more than once"),
    ((0, 0), False, "ArgumentError", r"axes \(0, 0\)"),
    ("0", False, "ArgumentTypeError", r"axes must be an int"),
    (0, "no", "ArgumentTypeError", r"keepdims must be a bool"),
])
def test_reduce_builders_name_bad_arguments(axes, keepdims, error, pattern):
    from dlsys import errors

    for build in (op.make_reduce_sum, op.make_reduce_mean):
        with pytest.raises(getattr(errors, error), match=pattern):
            build((3, 4), axes, keepdims, "llvm", "llvm", "f")
