"""The sliding-window kernels (convolution, pooling and their adjoints): each kind's schedule
family (``conv_gemm``, ``conv_direct``, ``conv_weight`` or ``window``) parallelises and
vectorises it, ``DLSYS_SCHEDULE=naive`` builds the same computations without it
(test_schedule_mode.py checks that both agree), and the builders name every bad argument."""

import re

import numpy as np
import pytest
import torch
import tvm

from dlsys import tvm_op as op
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.kernels import build, registry
from dlsys.kernels.conv import compute as compute_conv
from dlsys.kernels.conv import gemm as gemm_conv

TARGET = build.make_target("llvm")
X, F, Y = (4, 3, 13, 12), (8, 3, 3, 3), (4, 8, 7, 6)   # stride 2, padding 1
P, G = (4, 3, 13, 12), (4, 3, 7, 6)                    # pooling 3, stride 2, padding 1
WINDOW = ((2, 2), (1, 1))
DEFINITIONS = {
    "conv2d": lambda: gemm_conv.conv2d(X, F, Y, *WINDOW, "float32"),
    "conv2d_grad_input": lambda: compute_conv.conv2d_grad_input(Y, F, X, *WINDOW, "float32"),
    "conv2d_grad_weight": lambda: compute_conv.conv2d_grad_weight(X, Y, F, *WINDOW, "float32"),
    "max_pool2d": lambda: compute_conv.max_pool2d(P, G, (3, 3), *WINDOW, "float32"),
    "avg_pool2d": lambda: compute_conv.avg_pool2d(P, G, (3, 3), *WINDOW, "float32"),
    "max_pool2d_grad": lambda: compute_conv.max_pool2d_grad(P, G, P, (3, 3), *WINDOW, "float32"),
    "avg_pool2d_grad": lambda: compute_conv.avg_pool2d_grad(G, P, (3, 3), *WINDOW, "float32"),
}


@pytest.mark.parametrize("kind", sorted(DEFINITIONS))
def test_window_schedule_parallelises_and_vectorises_and_naive_skips_it(monkeypatch, kind):
    family = registry.kind(kind).schedule
    tuned = build.scheduled_module(*DEFINITIONS[kind](), family, TARGET, "k").script()
    assert re.search(r"T\.parallel\(", tuned) and re.search(r"T\.vectorized\(", tuned), tuned
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    naive = build.scheduled_module(*DEFINITIONS[kind](), family, TARGET, "k").script()
    assert not re.search(r"T\.(parallel|vectorized)\(", naive), naive


L = ("llvm", "llvm", "f")


@pytest.mark.parametrize("call, error, words", [
    (lambda: op.make_conv2d(X, F, *L, stride=0), ShapeError, "stride must be positive"),
    (lambda: op.make_conv2d(X, F, *L, padding=(1, -1)), ShapeError, "padding"),
    (lambda: op.make_conv2d(X, F, *L, stride="2"), ArgumentTypeError, "stride"),
    (lambda: op.make_conv2d((1, 3, 2, 2), F, *L, padding=0), ShapeError, "larger"),
    (lambda: op.make_conv2d_grad_input(X, (8, 2, 3, 3), *L), ShapeError, "channels"),
    (lambda: op.make_conv2d_grad_weight(X, (8, 3, 3), *L), ShapeError, "shapeF"),
    (lambda: op.make_maxpool2d((3, 13, 12), 2, *L), ShapeError, "shapeX"),
    (lambda: op.make_maxpool2d(P, 14, *L), ShapeError, "larger"),
    (lambda: op.make_maxpool2d(P, 0, *L), ShapeError, "kernel_size must be positive"),
    (lambda: op.make_avgpool2d(P, 2, *L, padding=2), ShapeError, "half"),
    (lambda: op.make_avgpool2d_grad(P, 2, *L, stride=-1), ShapeError, "stride"),
    (lambda: op.make_maxpool2d_grad(P, 2.0, *L), ArgumentTypeError, "kernel_size"),
])
def test_builders_name_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", [
    ((2, 3, 13, 12), (3, 3), (2, 2), (1, 1), (1, 1), False),   # ResNet's pool, odd sizes
    ((1, 2, 9, 10), (2, 3), (1, 2), (0, 1), (1, 1), True),     # last windows past the end
    ((1, 2, 8, 70), (2, 2), (2, 2), (0, 0), (1, 1), False),    # rows longer than 2 vectors
    ((1, 2, 11, 12), (3, 2), (2, 1), (1, 1), (2, 2), False),   # dilated
])
def test_max_pool_in_rows_matches_torch_and_keeps_minus_infinity(shape, kernel, stride,
                                                                  padding, dilation,
                                                                  ceil_mode):
    """The max pool reduces each window's rows first, then its columns
    (``compute.dilated_max_pool2d``): exact against PyTorch, windows of -inf give -inf (not
    the lowest float), and padding never wins over a negative input."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) - 10).astype("float32")
    x[0, 0, :4, :4] = -np.inf
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, padding,
                                          dilation, ceil_mode=ceil_mode).numpy()
    inputs, outputs = compute_conv.dilated_max_pool2d(shape, want.shape, kernel, stride,
                                                      padding, dilation, "float32")
    run = build.compile_module(inputs, outputs, "window", TARGET, "k")["k"]
    got = tvm.runtime.empty(want.shape, "float32")
    run(tvm.runtime.tensor(x), got)
    assert np.isneginf(want[0, 0, 0, 0])
    np.testing.assert_array_equal(got.numpy(), want)
