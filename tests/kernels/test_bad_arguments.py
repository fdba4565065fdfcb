"""Every bad argument raises a dlsys error that names it; never an assert or a TVM error."""

import numpy as np
import pytest
import tvm

from dlsys import tvm_op as op
from dlsys.errors import ArgumentError, ArgumentTypeError, DlsysError, DtypeError, ShapeError
from dlsys.kernels import build

L = ("llvm", "llvm", "f")  # tgt, tgt_host, func_name

BAD_BUILDS = [
    # (call, error class, words the message must hold)
    (lambda: op.make_elemwise_add((3, -1), *L), ShapeError, "shape"),
    (lambda: op.make_elemwise_add((0, 4), *L), ShapeError, "shape"),
    (lambda: op.make_elemwise_add((), *L), ShapeError, "shape"),
    (lambda: op.make_elemwise_add(5, *L), ArgumentTypeError, "shape"),
    (lambda: op.make_elemwise_add("34", *L), ArgumentTypeError, "shape"),
    (lambda: op.make_elemwise_add((2.5, 3), *L), ArgumentTypeError, "shape"),
    (lambda: op.make_elemwise_add((True, 3), *L), ArgumentTypeError, "shape"),
    (lambda: op.make_elemwise_add(None, *L), ArgumentTypeError, "shape"),
    (lambda: op.make_elemwise_add((3,), "opencl", "llvm", "f"), ArgumentError, "tgt"),
    (lambda: op.make_elemwise_add((3,), 42, "llvm", "f"), ArgumentError, "tgt"),
    (lambda: op.make_elemwise_add((3,), ["llvm"], "llvm", "f"), ArgumentError, "tgt"),
    (lambda: op.make_elemwise_add((3,), tvm.target.Target("opencl"), "llvm", "f"),
     ArgumentError, "tgt"),
    (lambda: op.make_elemwise_add((3,), "llvm", "cuda", "f"), ArgumentError, "tgt_host"),
    (lambda: op.make_elemwise_add((3,), "llvm", "llvm", "2fast"), ArgumentError, "func_name"),
    (lambda: op.make_elemwise_add((3,), *L, dtype="int8"), DtypeError, "dtype"),
    (lambda: op.make_elemwise_add((3,), *L, dtype="float16"), DtypeError, "dtype"),
    (lambda: op.make_relu((3,), *L, dtype=np.float32), DtypeError, "dtype"),
    (lambda: op.make_elemwise_add_by_const((3,), "2", *L), ArgumentTypeError, "const_k"),
    (lambda: op.make_elemwise_mul_by_const((3,), None, *L), ArgumentTypeError, "const_k"),
    (lambda: op.make_elemwise_mul_by_const((3,), True, *L), ArgumentTypeError, "const_k"),
    (lambda: op.make_sgd_update((3,), "0.1", *L), ArgumentTypeError, "learning_rate"),
    (lambda: op.make_fill((3,), [1.0], *L), ArgumentTypeError, "value"),
    (lambda: op.make_matrix_mul((3,), False, (3, 2), False, *L), ShapeError, "shapeA"),
    (lambda: op.make_matrix_mul((3, 2), False, (2, 2, 1), False, *L), ShapeError, "shapeB"),
    (lambda: op.make_matrix_mul((3, 4), False, (3, 2), False, *L), ShapeError, "inner"),
    (lambda: op.make_matrix_mul((3, 4), True, (3, 2), True, *L), ShapeError, "inner"),
    (lambda: op.make_matrix_mul((3, 4), "yes", (4, 2), False, *L), ArgumentTypeError,
     "transposeA"),
    (lambda: op.make_conv2d((1, 3, 5), (2, 3, 1, 1), *L), ShapeError, "shapeX"),
    (lambda: op.make_conv2d((1, 3, 5, 5), (2, 3, 1), *L), ShapeError, "shapeF"),
    (lambda: op.make_conv2d((1, 3, 5, 5), (2, 4, 1, 1), *L), ShapeError, "channels"),
    (lambda: op.make_conv2d((1, 3, 5, 5), (2, 3, 6, 1), *L), ShapeError, "larger"),
    (lambda: op.make_matrix_softmax((3,), *L), ShapeError, "shape"),
    (lambda: op.make_matrix_softmax_cross_entropy((3, 4, 5), *L), ShapeError, "shape"),
    (lambda: op.make_matrix_softmax_cross_entropy_gradient((3,), *L), ShapeError, "shape"),
    (lambda: op.make_reduce_sum_axis_zero((3,), *L), ShapeError, "2 dimensions"),
    (lambda: op.make_reduce_sum_to((3, 4), (5,), *L), ShapeError, "(5,)"),
    (lambda: op.make_broadcast_to((3,), (4,), *L), ShapeError, "(4,)"),
    (lambda: op.make_broadcast_to((2, 3), (3,), *L), ShapeError, "(3,)"),
    (lambda: op.make_broadcast_binary("sub", (3,), (3,), *L), ArgumentError, "op"),
    (lambda: op.make_broadcast_binary("add", (3,), (4,), *L), ShapeError, "(4,)"),
]


@pytest.mark.parametrize("call, error, words", BAD_BUILDS,
                         ids=[f"{i}-{e.__name__}-{w}" for i, (_, e, w) in enumerate(BAD_BUILDS)])
def test_bad_builder_argument(call, error, words):
    with pytest.raises(error) as caught:
        call()
    assert words in str(caught.value)
    assert isinstance(caught.value, DlsysError)
    assert isinstance(caught.value, (ValueError, TypeError))


def test_unknown_schedule_mode(monkeypatch):
    monkeypatch.setenv("DLSYS_SCHEDULE", "fastest")
    with pytest.raises(ArgumentError, match="DLSYS_SCHEDULE"):
        op.make_relu((3,), *L)


def _tensor(shape, dtype="float32"):
    return tvm.runtime.empty(shape, dtype, tvm.cpu(0))


@pytest.fixture(scope="module")
def matmul():
    return op.make_matrix_mul((3, 4), False, (4, 5), False, "llvm", "llvm", "mm")


def test_call_with_wrong_shape_names_the_argument(matmul):
    with pytest.raises(ShapeError, match=r"argument 1 \(B\).*\(5, 4\)"):
        matmul(_tensor((3, 4)), _tensor((5, 4)), _tensor((3, 5)))
    with pytest.raises(ShapeError, match=r"argument 2 \(matmul\)"):
        matmul(_tensor((3, 4)), _tensor((4, 5)), _tensor((3, 4)))


def test_call_with_wrong_dtype(matmul):
    with pytest.raises(DtypeError, match=r"argument 0 \(A\).*float64"):
        matmul(_tensor((3, 4), "float64"), _tensor((4, 5)), _tensor((3, 5)))


def test_call_with_wrong_count_or_type(matmul):
    with pytest.raises(ArgumentTypeError, match="takes 3 tensors"):
        matmul(_tensor((3, 4)), _tensor((4, 5)))
    with pytest.raises(ArgumentTypeError, match="argument 0"):
        matmul(np.zeros((3, 4), "float32"), _tensor((4, 5)), _tensor((3, 5)))


def test_check_shape_accepts_numpy_integers():
    assert build.check_shape("shape", np.array([2, 3])) == (2, 3)
    assert build.check_shape("shape", (np.int64(4),)) == (4,)


@pytest.mark.parametrize("call, words", [
    (lambda: op.make_elemwise_add((2**31,), *L), "shape (2147483648,)"),
    (lambda: op.make_relu((2**63,), *L), "shape (9223372036854775808,)"),
    (lambda: op.make_relu((2**16, 2**16), *L), "shape (65536, 65536)"),  # int32 dims each
    (lambda: op.make_matrix_mul((2**40, 2), False, (2, 3), False, *L), "shapeA"),
    (lambda: op.make_broadcast_to((1, 3), (2**30, 3), *L), "to_shape"),
])
def test_shapes_past_int32_indexing_are_refused(call, words):
    # TVM indexes with int32: larger shapes either fail deep inside TVM or overflow silently.
    with pytest.raises(ShapeError, match="int32") as caught:
        call()
    assert words in str(caught.value)
    assert build.check_shape("shape", (2**31 - 1,)) == (2**31 - 1,)


def test_matmul_whose_product_is_past_int32_indexing_is_refused():
    with pytest.raises(ShapeError, match="product"):
        op.make_matrix_mul((2**20, 1), False, (1, 2**20), False, "llvm", "llvm", "f")
