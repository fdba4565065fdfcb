"""``DLSYS_SCHEDULE=naive`` builds the same computations without any of dlsys's schedules."""

import re

import numpy as np
import pytest
from kernel_testing import (
    broadcast_to_case,
    conv2d_case,
    elementwise_cases,
    matmul_case,
    reduce_axis_zero_case,
    run_case,
    softmax_cases,
    window_schedule_cases,
)

from dlsys.kernels import build
from dlsys.kernels.conv import gemm as gemm_conv
from dlsys.kernels.elementwise import compute
from dlsys.kernels.loss import compute as loss_compute
from dlsys.kernels.matmul import compute as matmul_compute
from dlsys.kernels.reduce import compute as reduce_compute

TARGET = build.make_target("llvm")
# Big enough that every tuned schedule parallelises or vectorises something.
DEFINITIONS = [
    ("injective", lambda: compute.elemwise_add((64, 300), "float32")),
    ("reduce_sum", lambda: reduce_compute.reduce_sum_axis_zero((300, 64), "float32")),
    ("softmax", lambda: loss_compute.softmax((64, 300), "float32")),
    ("row_loss", lambda: loss_compute.softmax_cross_entropy((64, 300), "float32")),
    ("window", lambda: gemm_conv.conv2d((4, 3, 12, 12), (8, 3, 3, 3), (4, 8, 10, 10), (1, 1),
                                        (0, 0), "float32")),
    ("matmul", lambda: matmul_compute.matmul((64, 48), False, (48, 80), False, "float32")),
]
OPTIMISED_LOOP = re.compile(r"T\.(parallel|vectorized)\(")


@pytest.mark.parametrize("kind, define", DEFINITIONS,
                         ids=[f"{k}-{i}" for i, (k, _) in enumerate(DEFINITIONS)])
def test_naive_mode_skips_the_schedule(monkeypatch, kind, define):
    tuned = build.scheduled_module(*define(), kind, TARGET, "k").script()
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    naive = build.scheduled_module(*define(), kind, TARGET, "k").script()
    assert naive != tuned
    assert OPTIMISED_LOOP.search(tuned), tuned
    assert not OPTIMISED_LOOP.search(naive), naive


CASES = (elementwise_cases((64, 300))[:1] + [reduce_axis_zero_case((300, 64))]
         + softmax_cases((64, 300)) + [conv2d_case((4, 3, 12, 12), (8, 3, 3, 3)),
                                       matmul_case(64, 48, 80, False, True),
                                       broadcast_to_case((300,), (64, 300))]
         + window_schedule_cases())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_naive_and_tuned_agree(monkeypatch, case):
    tuned, _ = run_case(case, "llvm", "float32")
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    naive, want = run_case(case, "llvm", "float32")
    for t, n, w in zip(tuned, naive, want):
        np.testing.assert_allclose(n, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-6)


def test_naive_kernel_is_a_different_compiled_function(monkeypatch):
    case = elementwise_cases((64, 300))[4]  # relu
    tuned = case.build("llvm", "float32")
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    naive = case.build("llvm", "float32")
    assert naive is not tuned and naive.func is not tuned.func
