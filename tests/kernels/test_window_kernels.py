"""The sliding-window kernels (convolution, pooling and their adjoints): each kind's schedule
family (``conv_gemm``, ``conv_direct``, ``conv_weight`` or ``window``) parallelises and
vectorises it, ``DLSYS_SCHEDULE=naive`` builds the same computations without it
(test_schedule_mode.py checks that both agree), and the builders name every bad argument."""

import re

import pytest

from dlsys import tvm_op as op
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.kernels import build, registry
from dlsys.kernels.conv import compute as compute_conv

TARGET = build.make_target("llvm")
X, F, Y = (4, 3, 13, 12), (8, 3, 3, 3), (4, 8, 7, 6)   # stride 2, padding 1
P, G = (4, 3, 13, 12), (4, 3, 7, 6)                    # pooling 3, stride 2, padding 1
WINDOW = ((2, 2), (1, 1))
DEFINITIONS = {
    "conv2d": lambda: compute_conv.conv2d(X, F, Y, *WINDOW, "float32"),
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
