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
from dlsys.kernels.conv import gemm, winograd
from dlsys.kernels.conv import schedule as conv_schedule
from dlsys.kernels.cpu import CpuFacts
from dlsys.kernels.registry import KernelSpec, elementwise_formula

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


def _check(x: np.ndarray, f: np.ndarray, bias: np.ndarray, expected: np.ndarray, stride: int,
           padding: int) -> tvm.IRModule:
    """Compile the bias + ReLU6 convolution, compare it with ``expected``; returns its
    scheduled module."""
    epilogue = [(step, elementwise_formula(step.kind)) for step in BIAS_RELU6]
    inputs, outputs = gemm.conv2d_epilogue(x.shape, f.shape, expected.shape, (stride,) * 2,
                                           (padding,) * 2, epilogue, "float32")
    target = make_target("llvm")
    kernel = compile_module(inputs, outputs, "conv_gemm", target, "conv")["conv"]
    out = tvm.runtime.empty(expected.shape, "float32")
    kernel(tvm.runtime.tensor(x), tvm.runtime.tensor(f), tvm.runtime.tensor(bias), out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    return scheduled_module(inputs, outputs, "conv_gemm", target, "conv")


@pytest.mark.parametrize("shape_x, shape_f, stride, padding", [
    ((2, 5, 4, 8), (24, 5, 1, 1), 1, 0),     # pointwise: 32 positions, two vectors
    ((2, 3, 8, 16), (16, 3, 3, 3), 2, 1),    # strided 3 x 3: 4 x 8 positions
])
def test_whole_tiles_write_back_from_registers(shape_x, shape_f, stride, padding):
    rng = np.random.default_rng(sum(shape_x))
    x = rng.standard_normal(shape_x).astype(np.float32) * 3
    f = rng.standard_normal(shape_f).astype(np.float32)
    bias = rng.standard_normal((shape_f[0], 1, 1)).astype(np.float32)
    module = _check(x, f, bias, _reference(x, f, bias, stride, padding), stride, padding)
    # Inside the tile: the image's unit loop, the channels, the vectors unrolled; lanes
    # vectorised.
    kinds = _write_back_loop_kinds(module)[-4:]
    assert kinds == [tirx.ForKind.UNROLLED] * 3 + [tirx.ForKind.VECTORIZED]


AVX512 = CpuFacts("znver4", vector_bytes=64, vector_registers=32, l2_bytes=1 << 20)
AVX2 = CpuFacts("znver3", vector_bytes=32, vector_registers=16, l2_bytes=512 << 10)


@pytest.mark.parametrize("cpu, channels, image_bytes, expected", [
    (AVX512, 16, 32 * 112 * 112 * 4, 8),    # MobileNet v2's 32 -> 16 on 112 x 112 pixels
    (AVX512, 24, 96 * 56 * 56 * 4, 8),      # its 96 -> 24 on 56 x 56
    (AVX2, 24, 96 * 56 * 56 * 4, 4),
    (AVX512, 32, 144 * 28 * 28 * 4, 16),    # 451 kB: under half an L2, read from cache
    (AVX512, 96, 16 * 112 * 112 * 4, 16),   # many output channels: no pass per tile
])
def test_streamed_images_take_tiles_of_fewer_rows(cpu, channels, image_bytes, expected):
    tile = conv_schedule.gemm_tile(channels, 784, "float32", cpu)
    streamed = conv_schedule.streamed_tile(tile, channels, image_bytes, cpu)
    assert streamed.rows == expected and channels % streamed.rows == 0
    assert (streamed.vectors, streamed.lanes) == (tile.vectors, tile.lanes)


def test_streamed_tile_matches_numpy(monkeypatch):
    # An L2 of 2 kB: the 2 kB images stream, so that 16 channels take tiles of 8 rows, each
    # tile of positions through both before the next.
    small_l2 = CpuFacts("znver4", vector_bytes=64, vector_registers=32, l2_bytes=2048)
    monkeypatch.setattr(conv_schedule.cpu_facts, "host", lambda: small_l2)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 4, 16)).astype(np.float32) * 3
    f = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    bias = rng.standard_normal((16, 1, 1)).astype(np.float32)
    expected = _reference(x, f, bias, 1, 0)
    module = _check(x, f, bias, expected, 1, 0)
    sch = s_tir.Schedule(module)
    update = sch.get_sblock(f"{conv_schedule.GEMM_BLOCK}_update", func_name="conv")
    extents = [int(sch.get(loop).extent) for loop in sch.get_loops(update)]
    # Image, tile of positions, tile of channels, taps (8, 1, 1), then the tile: 8 rows.
    assert extents[-3:] == [8, 1, 16]


def _panels(f: np.ndarray, panel: int) -> np.ndarray:
    """Filters as ``pack_filters`` lays them out: ``P[q, k, l] = F[q * panel + l, k]``."""
    channels = -(-f.shape[0] // panel) * panel
    flat = np.zeros((channels, f[0].size), f.dtype)
    flat[:f.shape[0]] = f.reshape(f.shape[0], -1)
    return np.ascontiguousarray(flat.reshape(-1, panel, flat.shape[1]).transpose(0, 2, 1))


@pytest.mark.parametrize("tiles", [(7, 2, 16, True), (10, 1, 16, False)])
def test_prepacked_write_back_from_registers(tiles):
    # 7 x 7 positions: a row a tile in place, or tiles of 10 copied windows (the last one
    # padded); 40 channels, no whole number of panels.
    rng = np.random.default_rng(tiles[0])
    x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32) * 3
    f = rng.standard_normal((40, 6, 1, 1)).astype(np.float32)
    bias = rng.standard_normal((40, 1, 1)).astype(np.float32)
    expected = _reference(x, f, bias, 1, 0)
    spec = KernelSpec("conv2d_prepacked", (x.shape, f.shape, expected.shape, (1, 1), (0, 0),
                                           tiles, BIAS_RELU6))
    kernel = spec.build("llvm", "float32")
    out = tvm.runtime.empty(expected.shape, "float32")
    kernel.func(tvm.runtime.tensor(x), tvm.runtime.tensor(_panels(f, tiles[1] * tiles[2])),
                tvm.runtime.tensor(bias), out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    # The tile's loops unrolled (the image's, the panel's channels, any rows), but the last.
    kinds = _write_back_loop_kinds(kernel.source("conv"))
    dims = 4 if tiles[3] else 3
    assert kinds[-dims:] == [tirx.ForKind.UNROLLED] * (dims - 1) + [tirx.ForKind.SERIAL]


@pytest.mark.parametrize("layout", [(4, 1, 2, 1, 16), (4, 1, 2, 2, 16)])
def test_winograd_accumulators_leave_registers_a_vector_at_a_time(layout):
    # Register tiles of 2 tiles by one or two vectors of channels: their copy out is unrolled
    # over the tiles and the vectors, each vector one store (the kernel's results are
    # checked against numpy in tests/ops/test_conv_winograd.py).
    spec = KernelSpec("conv2d_winograd", ((1, 4, 6, 6), (32, 4, 3, 3), (1, 32, 6, 6), (1, 1),
                                          (1, 1), layout, ()))
    module = spec.build("llvm", "float32").source("conv")
    sch = s_tir.Schedule(module)
    copy = sch.get_sblock(f"{winograd.PRODUCT_BLOCK}_local", func_name="conv")
    kinds = [sch.get(loop).kind for loop in sch.get_loops(copy)]
    assert kinds[-3:] == [tirx.ForKind.UNROLLED] * 2 + [tirx.ForKind.VECTORIZED]
    assert int(sch.get(sch.get_loops(copy)[-1]).extent) == layout[4]
