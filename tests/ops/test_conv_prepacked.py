"""Convolutions whose constant filters are packed once into panels of output channels
(``pack_filters``, ``conv2d_prepacked``): the packed layout against the operator's numpy
reference, the kernel against numpy for odd channel counts, tiles that pad the positions,
tiles reading the image in place (whole rows, rows padded to whole tiles, parts of a row), a
fused epilogue, one image (tiles in parallel) and several; the tile choice (LeNet-5's second
layer in place); and an executor with constant weights choosing it where the kernel layer
says it pays, and seeing a changed weight."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ShapeError
from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.epilogue import EPILOGUE_LABELS
from dlsys.kernels.conv import packed
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.conv import conv2d_op, pack_filters_op
from dlsys.ops.placeholder import Variable

# Bias per channel, a residual of the output's shape, then ReLU: a ResNet block's end.
BIAS_RESIDUAL_RELU = (EPILOGUE_LABELS["channel_bias_add"], EPILOGUE_LABELS["add"],
                      EPILOGUE_LABELS["relu"])


def _tensor(array: np.ndarray):
    return tvm.runtime.tensor(np.ascontiguousarray(array))


def _packed_filters(w: np.ndarray, panel: int) -> np.ndarray:
    """``w`` packed by its kernel, checked against the operator's reference."""
    node = pack_filters_op(Variable("w"), panel)
    expected = node.op.reference(node, w)
    assert expected.shape == node.op.infer_shape(node, [w.shape])
    kernel = KernelSpec("pack_filters", (w.shape, panel)).build("llvm", str(w.dtype))
    out = tvm.runtime.empty(expected.shape, str(w.dtype))
    kernel.func(_tensor(w), out)
    np.testing.assert_array_equal(out.numpy(), expected)
    return expected


def test_panels_hold_each_channels_taps_and_zeros_past_the_last():
    w = np.random.default_rng(0).standard_normal((20, 3, 2, 3)).astype("float32")
    panels = _packed_filters(w, 16)
    assert panels.shape == (2, 18, 16)
    for o in range(20):
        np.testing.assert_array_equal(panels[o // 16, :, o % 16], w[o].reshape(-1))
    assert not panels[1, :, 4:].any()


# (batch, channels in, size, channels out, kernel, stride, padding, tiles): channel counts
# that are no multiple of a panel, tiles that do not divide the positions (7 x 7 = 49 in
# tiles of 10), strides, one image and several. In place: LeNet-5's second layer at batch 1
# (one row a tile, too little work for two threads), two rows of a 9 x 9 output (its rows
# padded to 10), half a row at stride 2 with padding, a 5 x 5 filter's 2 x 2 output in one
# image's three panels, and one image with enough work (``packed.PARALLEL_MIN_WORK``) for
# its padded copy and its tiles to run in parallel.
CASES = [(2, 5, 7, 20, 3, 1, 1, (10, 1, 16, False)),
         (1, 8, 9, 32, 1, 2, 0, (7, 2, 16, False)),
         (3, 6, 8, 40, 3, 2, 1, (4, 1, 16, False)),
         (1, 6, 14, 16, 5, 1, 0, (10, 1, 16, True)),
         (2, 3, 9, 20, 3, 1, 1, (18, 1, 16, True)),
         (3, 5, 13, 32, 3, 2, 2, (4, 2, 16, True)),
         (1, 4, 6, 40, 5, 1, 0, (1, 1, 16, True)),
         (1, 32, 16, 64, 3, 1, 1, (8, 2, 16, True))]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("batch,c,size,o,k,stride,padding,tiles", CASES)
def test_kernel_matches_numpy(batch, c, size, o, k, stride, padding, tiles, fused):
    rng = np.random.default_rng(batch * o + k)
    x = rng.standard_normal((batch, c, size, size)).astype("float32")
    w = rng.standard_normal((o, c, k, k)).astype("float32")
    node = conv2d_op(Variable("x"), Variable("w"), stride, padding)
    expected = node.op.reference(node, x, w)
    operands = []
    if fused:
        bias = rng.standard_normal((o, 1, 1)).astype("float32")
        residual = rng.standard_normal(expected.shape).astype("float32")
        operands = [bias, residual]
        expected = np.maximum(expected + bias + residual, 0)
    panels = _packed_filters(w, tiles[1] * tiles[2])
    spec = KernelSpec("conv2d_prepacked", (x.shape, w.shape, expected.shape, (stride, stride),
                                           (padding, padding), tiles,
                                           BIAS_RESIDUAL_RELU if fused else ()))
    out = tvm.runtime.empty(expected.shape, "float32")
    spec.build("llvm", "float32").func(_tensor(x), _tensor(panels), *map(_tensor, operands),
                                       out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_a_tile_that_is_no_part_of_a_row_is_not_read_in_place():
    with pytest.raises(ShapeError, match="7 positions"):
        packed.conv2d_prepacked((1, 2, 6, 6), (16, 2, 3, 3), (1, 16, 4, 4), (1, 1), (0, 0),
                                (7, 1, 16, True), (), "float32")


def test_small_planes_take_channel_panels_and_large_ones_do_not():
    # 7 x 7 positions pad to 64 when vectorised along positions; 28 x 28 need no padding (their
    # windows copied a few rows at a time), and at 1 x 1 the implicit GEMM reads them in place.
    assert packed.packed_tiles((512, 512, 3, 3), (32, 512, 7, 7), "float32") is not None
    assert packed.packed_tiles((128, 128, 3, 3), (32, 128, 28, 28), "float32") is None
    assert packed.packed_tiles((64, 64, 1, 1), (32, 64, 28, 28), "float32") is None


def test_a_pointwise_tile_within_a_row_may_fill_the_registers():
    registers = cpu_facts.host().vector_registers
    pointwise = packed.packed_tiles((64, 384, 1, 1), (32, 64, 14, 14), "float32")
    assert pointwise is not None and pointwise.in_place and 14 % pointwise.positions == 0
    accumulators = pointwise.positions * pointwise.vectors
    assert accumulators + pointwise.vectors + 1 <= registers
    # A 3 x 3 filter's tile keeps to half of them (its window indices take registers too).
    windowed = packed.packed_tiles((512, 512, 3, 3), (32, 512, 14, 14), "float32")
    assert windowed is not None and windowed.positions * windowed.vectors <= registers // 2
    assert accumulators > registers // 2 or pointwise.positions == windowed.positions


def test_lenet_second_layer_reads_whole_rows_in_place():
    # 16 channels, 10 x 10 positions: about as many multiply-adds either way, but the
    # implicit GEMM copies its windows first.
    tile = packed.packed_tiles((16, 6, 5, 5), (1, 16, 10, 10), "float32")
    assert tile is not None and tile.in_place and 10 % tile.positions == 0
    # A long prime row has no in-place tile of two vectors that fits the registers.
    tile = packed.packed_tiles((512, 512, 3, 3), (8, 512, 11, 11), "float32")
    assert tile is not None and not tile.in_place


@pytest.mark.parametrize("batch", [1, 3])
def test_executor_packs_constant_filters_once_and_sees_them_change(batch):
    rng = np.random.default_rng(batch)
    layer = nn.Conv2d(8, 32, 3, padding=1)
    x = ad.Variable("x")
    executor = ad.Executor([ad.relu_op(layer(x))], constants=layer.parameters())
    images = rng.standard_normal((batch, 8, 7, 7)).astype("float32")

    def expected():
        weight, bias = (p.numpy() for p in layer.parameters())
        node = conv2d_op(Variable("x"), Variable("w"), 1, 1)
        return np.maximum(node.op.reference(node, images, weight) + bias[:, None, None], 0)

    (value,) = executor.run({x: images}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(value, expected(), rtol=1e-4, atol=1e-4)
    rows = [name for name, *_ in executor.storage_table()]
    assert sum(name.startswith("PackFilters") for name in rows) == 1, rows
    weight = layer.parameters()[0]
    weight.assign(rng.standard_normal(weight.shape).astype("float32"))
    (value,) = executor.run({x: images}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(value, expected(), rtol=1e-4, atol=1e-4)
