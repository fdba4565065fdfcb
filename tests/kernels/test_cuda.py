"""Every kernel builder on CUDA against numpy; skipped where no CUDA device exists.

Kernels for ``tgt="cuda"`` get TVM's default GPU schedule (threads bound to the fused spatial
loops), so these tests check that every compute definition survives that binding, reduction
blocks and the scalar loss included.
"""

import numpy as np
import pytest
import tvm
from kernel_testing import (
    assert_case,
    broadcast_to_case,
    conv2d_case,
    elementwise_cases,
    large_logit_cases,
    matmul_case,
    odd_cases,
    reduce_axis_zero_case,
    run_case,
    seed_cases,
    softmax_cases,
)

from dlsys import tvm_op as op

pytestmark = pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA device")

ODD = odd_cases()
SEED = seed_cases()
LARGE = large_logit_cases()
# float64 once per builder: the dtype changes the generated code, not the loop structure.
FLOAT64 = (elementwise_cases((13, 17)) + [matmul_case(17, 3, 33, True, False),
                                          conv2d_case((2, 3, 7, 6), (5, 3, 3, 2)),
                                          reduce_axis_zero_case((17, 5, 3)),
                                          broadcast_to_case((5, 1), (5, 7))]
           + softmax_cases((7, 17)))


def _cuda():
    return tvm.cuda(0)


@pytest.mark.parametrize("case", ODD, ids=[c.id for c in ODD])
def test_odd_sizes_float32(case):
    assert_case(case, "cuda", "float32", _cuda())


@pytest.mark.parametrize("case", FLOAT64, ids=[c.id for c in FLOAT64])
def test_float64(case):
    assert_case(case, "cuda", "float64", _cuda())


@pytest.mark.parametrize("case", SEED, ids=[c.id for c in SEED])
def test_seed_sizes_float32(case):
    assert_case(case, "cuda", "float32", _cuda())


@pytest.mark.parametrize("case", LARGE, ids=[c.id for c in LARGE])
def test_large_logits(case):
    got, _ = run_case(case, "cuda", "float32", _cuda())
    assert all(np.isfinite(g).all() for g in got), case.id
    assert_case(case, "cuda", "float32", _cuda())


def test_sgd_update_in_place():
    shape = (129, 65)
    rng = np.random.default_rng(2)
    w, g = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    kernel = op.make_sgd_update(shape, 0.01, "cuda", "llvm", "sgd")
    w_gpu = tvm.runtime.tensor(w, _cuda())
    kernel(w_gpu, tvm.runtime.tensor(g, _cuda()), w_gpu)
    # The GPU contracts w - lr * g into one fused multiply-add, one rounding fewer than numpy.
    np.testing.assert_allclose(w_gpu.numpy(), w - np.float32(0.01) * g, rtol=1e-5, atol=1e-7)


def test_cpu_tensor_into_a_cuda_kernel_is_refused():
    kernel = op.make_relu((8,), "cuda", "llvm", "relu")
    cpu = tvm.runtime.empty((8,), "float32", tvm.cpu(0))
    with pytest.raises(ValueError, match="argument 0"):
        kernel(cpu, tvm.runtime.empty((8,), "float32", _cuda()))
