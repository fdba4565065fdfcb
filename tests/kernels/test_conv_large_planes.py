"""The implicit GEMM's register tile kept in registers to its store: with whole tiles of
positions, the write-back's loops over the tile's channels and vectors are unrolled, so that
the accumulators go from the product to the output with no stack copy. Small convolutions
with fused epilogues (a channel bias, ReLU6) against numpy, pointwise and strided 3 x 3."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir, tirx

from dlsys.kernels.build import compile_module, make_target, scheduled_module
from dlsys.kernels.common.epilogue import EPILOGUE_PREFIX, Epilogue, epilogue_from_label
from dlsys.kernels.conv import gemm
from dlsys.kernels.registry import elementwise_formula

BIAS_RELU6 = (epilogue_from_label("channel_bias_add"),
              Epilogue("clip", "clip", constants=(0.0, 6.0)))


def _reference(x: np.ndarray, f: np.ndarray, bias: np.ndarray, stride: int,
               padding: int) -> np.ndarray:
    """ReLU6(X * F + bias) in float64, the windows gathered by numpy's strides."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    kh, kw = f.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    out = np.einsum("bcijyx,ocyx->boij", windows, f.astype(np.float64)) + bias
    return np.clip(out, 0.0, 6.0)


def _write_back_loop_kinds(module: tvm.IRModule) -> list:
    """The kinds of the loops around the last epilogue block (the store), outermost first."""
    sch = s_tir.Schedule(module)
    store = sch.get_sblock(f"{EPILOGUE_PREFIX}{len(BIAS_RELU6) - 1}", func_name="conv")
    return [sch.get(loop).kind for loop in sch.get_loops(store)]


@pytest.mark.parametrize("shape_x, shape_f, stride, padding", [
    ((2, 5, 4, 8), (24, 5, 1, 1), 1, 0),     # pointwise: 32 positions, two vectors
    ((2, 3, 8, 16), (16, 3, 3, 3), 2, 1),    # strided 3 x 3: 4 x 8 positions
])
def test_whole_tiles_write_back_from_registers(shape_x, shape_f, stride, padding):
    rng = np.random.default_rng(sum(shape_x))
    x = rng.standard_normal(shape_x).astype(np.float32) * 3
    f = rng.standard_normal(shape_f).astype(np.float32)
    bias = rng.standard_normal((shape_f[0], 1, 1)).astype(np.float32)
    expected = _reference(x, f, bias, stride, padding)
    epilogue = [(step, elementwise_formula(step.kind)) for step in BIAS_RELU6]
    inputs, outputs = gemm.conv2d_epilogue(shape_x, shape_f, expected.shape, (stride,) * 2,
                                           (padding,) * 2, epilogue, "float32")
    target = make_target("llvm")
    kernel = compile_module(inputs, outputs, "conv_gemm", target, "conv")["conv"]
    out = tvm.runtime.empty(expected.shape, "float32")
    kernel(tvm.runtime.tensor(x), tvm.runtime.tensor(f), tvm.runtime.tensor(bias), out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    module = scheduled_module(inputs, outputs, "conv_gemm", target, "conv")
    # Inside the tile: the image's unit loop, the channels, the vectors unrolled; lanes
    # vectorised.
    kinds = _write_back_loop_kinds(module)[-4:]
    assert kinds == [tirx.ForKind.UNROLLED] * 3 + [tirx.ForKind.VECTORIZED]
