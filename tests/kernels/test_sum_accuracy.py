"""Sums of many float32 values, against numpy: every reduction kernel (sums and means over
any axes, a bias gradient's ``reduce_sum_to``, batch norm's per-channel sums and statistics)
stays within 1e-6 relative of the exact sum however many terms it adds.

A float32 accumulator stops growing at 2**24 (``sum_op`` of 2**25 ones gave 16,777,216 and
``mean_op`` 0.5) and drifts by about 1e-4 relative over 10**7 terms; the kernels add float32
blocks into float64 totals (``compute.ACCUMULATOR``, ``compute.block_sums``)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from dlsys import autodiff as ad
from dlsys import tvm_op as op
from dlsys.kernels.registry import KernelSpec

RTOL = 1e-6


def _run(kernel, *arrays: np.ndarray) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros(kernel.arg_shapes[-1], np.float32))
    kernel(*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


def _assert_close(got: np.ndarray, exact: np.ndarray) -> None:
    """Within ``RTOL`` of the float64 result, relative to its largest magnitude."""
    error = np.abs(got.astype(np.float64) - exact).max() / np.abs(exact).max()
    assert error < RTOL, f"relative error {error:.2e}"


def test_sum_and_mean_of_2_to_the_25_ones_are_exact():
    x = ad.Variable("x")
    ones = np.ones(1 << 25, np.float32)
    total, mean = ad.Executor([ad.sum_op(x), ad.mean_op(x)]).run(
        {x: ones}, convert_to_numpy_ret_vals=True)
    assert total[0] == 1 << 25
    assert mean[0] == 1.0


def test_sum_of_10_to_the_8_uniform_values_matches_numpy():
    values = np.random.default_rng(0).random(10**8, dtype=np.float32)
    got = _run(op.make_reduce_sum(values.shape, None, False, "llvm", "llvm", "f"), values)
    _assert_close(got, values.sum(dtype=np.float64).reshape(1))


@pytest.mark.parametrize("shape, axes", [
    ((1 << 22, 8), 0),          # a bias gradient over 4M rows: the float32 blocks' path
    ((8, 1 << 22), 1),          # rows: one float64 partial per vector lane
    ((3, 1 << 21, 5), (0, 1)),  # leading and middle axes, the innermost kept
    ((2, 1000003), None),       # a prime run: no vector lanes divide it
])
def test_long_sums_over_axes_match_numpy(shape, axes):
    values = np.random.default_rng(1).random(shape, dtype=np.float32)
    got = _run(op.make_reduce_mean(shape, axes, False, "llvm", "llvm", "f"), values)
    _assert_close(got.reshape(-1), values.mean(axis=axes, dtype=np.float64).reshape(-1))


def test_bias_gradient_over_many_rows_matches_numpy():
    values = np.random.default_rng(2).random((1 << 22, 8), dtype=np.float32)
    got = _run(op.make_reduce_sum_to(values.shape, (8,), "llvm", "llvm", "f"), values)
    _assert_close(got, values.sum(axis=0, dtype=np.float64))


@pytest.mark.parametrize("shape", [
    (64, 2, 512, 512),   # 2**24 values a channel, in large planes
    (1 << 20, 2, 1, 1),  # 2**20 images of one value (a batch norm over features)
])
def test_batchnorm_channel_sums_and_statistics_match_numpy(shape):
    x = np.random.default_rng(3).random(shape, dtype=np.float32)
    sums = _run(KernelSpec("channel_sum", (shape, (shape[1], 1, 1))).build("llvm", "float32"), x)
    _assert_close(sums.reshape(-1), x.sum(axis=(0, 2, 3), dtype=np.float64))
    # momentum 1: the running statistic is the batch's own mean.
    running = np.zeros(shape[1], np.float32)
    mean = _run(KernelSpec("running_statistic", (shape, "mean", 1.0)).build("llvm", "float32"),
                running, x)
    _assert_close(mean, x.mean(axis=(0, 2, 3), dtype=np.float64))


@pytest.mark.parametrize("fused_with_gradient", [False, True])
def test_mean_loss_of_a_large_batch(fused_with_gradient):
    # The loss's mean over 2**20 rows: a float32 total drifted by 6e-6 relative.
    rng = np.random.default_rng(0)
    rows = 1 << 20
    logits = rng.standard_normal((rows, 10)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)]
    y, y_ = ad.Variable("y"), ad.Variable("y_")
    loss = ad.softmaxcrossentropy_op(y, y_)
    nodes = [loss, *ad.gradients(loss, [y])] if fused_with_gradient else [loss]
    got = ad.Executor(nodes).run({y: logits, y_: labels}, convert_to_numpy_ret_vals=True)[0]
    wide = logits.astype(np.float64)
    shifted = wide - wide.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    _assert_close(got, np.array([-(labels * log_softmax).sum(axis=1).mean()]))
