"""The implicit GEMM's layouts of its windows: copied a panel of positions at a time
(``col_in_panels``, ResNet's first convolution), forced on small shapes here, plain, strided,
dilated and grouped convolutions against PyTorch's, and which layers take it; and pointwise
convolutions over whole tiles of positions, which read the images in place (no copy)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

from dlsys.kernels.build import compile_module, make_target, scheduled_module  # noqa: E402
from dlsys.kernels.common.epilogue import Epilogue, epilogue_from_label  # noqa: E402
from dlsys.kernels.conv import gemm  # noqa: E402
from dlsys.kernels.conv import schedule as conv_schedule  # noqa: E402
from dlsys.kernels.cpu import CpuFacts  # noqa: E402
from dlsys.kernels.registry import elementwise_formula  # noqa: E402

AVX512 = CpuFacts("znver4", vector_bytes=64, vector_registers=32, l2_bytes=1 << 20,
                  l1_bytes=32 << 10)

# (images, filters, stride, padding, dilation, groups): the output's width is not a multiple
# of the panel, so panels straddle rows, and the positions pad the last one.
CASES = {
    "plain": ((2, 3, 9, 11), (8, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "strided": ((1, 4, 13, 10), (6, 4, 3, 2), (2, 2), (1, 0), (1, 1), 1),
    "dilated_grouped": ((2, 4, 10, 9), (6, 2, 3, 3), (1, 1), (2, 1), (2, 2), 2),
}


def _check_against_pytorch(shape_x, shape_f, stride, padding, dilation, groups) -> str:
    """Compile the forward kernel, compare it with PyTorch's; returns its scheduled TIR."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape_x).astype(np.float32)
    f = rng.standard_normal(shape_f).astype(np.float32)
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), torch.from_numpy(f).double(), stride=stride,
        padding=padding, dilation=dilation, groups=groups).numpy()
    inputs, outputs = gemm.grouped_conv2d(shape_x, shape_f, expected.shape, stride, padding,
                                          dilation, groups, "float32")
    target = make_target("llvm")
    kernel = compile_module(inputs, outputs, "conv_gemm", target, "conv")
    out = tvm.runtime.empty(expected.shape, "float32")
    kernel["conv"](tvm.runtime.tensor(x), tvm.runtime.tensor(f), out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)
    return scheduled_module(inputs, outputs, "conv_gemm", target, "conv").script()


@pytest.mark.parametrize("case", sorted(CASES))
def test_panels_match_pytorch(monkeypatch, case):
    monkeypatch.setattr(conv_schedule, "COL_L2_MULTIPLE", 0)  # every copy in panels
    assert conv_schedule.COL_PANELS in _check_against_pytorch(*CASES[case])


# Outputs of 4 x 12 positions: panels of 4 whole rows, 3 vectors of 16.
ROW_CASES = {
    "plain": ((2, 3, 4, 12), (8, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "strided": ((1, 4, 8, 24), (6, 4, 3, 2), (2, 2), (1, 0), (1, 1), 1),
    "dilated_grouped": ((2, 4, 4, 14), (6, 2, 3, 3), (1, 1), (2, 1), (2, 2), 2),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_row_panels_match_pytorch(monkeypatch, case):
    monkeypatch.setattr(conv_schedule, "ROW_PANEL_L2_MULTIPLE", 0)  # every copy in row panels
    shape_x, shape_f = ROW_CASES[case][:2]
    script = _check_against_pytorch(*ROW_CASES[case])
    # The copy is (images, panels, channels, filter rows, filter columns, 48 positions).
    assert f"{shape_x[1]}, {shape_f[2]}, {shape_f[3]}, 48)" in script


@pytest.mark.parametrize("channels", [8, 32])
def test_pointwise_over_l2_reads_images_in_place(monkeypatch, channels):
    monkeypatch.setattr(conv_schedule, "ROW_PANEL_L2_MULTIPLE", 0)  # every image over L2
    # 4 x 12 positions, whole tiles: one tile of channels (8) or more (32), the images are
    # read in place, neither copied nor copied in row panels.
    script = _check_against_pytorch((2, 4, 4, 12), (channels, 4, 1, 1), (1, 1), (0, 0),
                                    (1, 1), 1)
    assert conv_schedule.COL_PANELS not in script
    assert "col" not in script and "pad" not in script


def test_strided_pointwise_copies_windows_from_the_images():
    # 1 x 1 filters at stride 2 with no padding: the windows are copied from the images
    # themselves, with no padded copy of them first.
    script = _check_against_pytorch((2, 4, 8, 8), (6, 4, 1, 1), (2, 2), (0, 0), (1, 1), 1)
    assert "pad" not in script and "col" in script


@pytest.mark.parametrize("label, constants", [("relu", ()), ("clip", (0.0, 6.0))])
def test_clipped_write_back_with_an_epilogue(label, constants):
    # 3 x 5 positions: one partial tile, written back clipped, with a bias and the step;
    # a clip binds its value (a Let), so its write-back is unrolled over channels.
    step = Epilogue("clip", "clip", constants=constants) if label == "clip" \
        else epilogue_from_label(label)
    steps = [epilogue_from_label("channel_bias_add"), step]
    epilogue = [(s, elementwise_formula(s.kind)) for s in steps]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 3, 5)).astype(np.float32) * 4
    f = rng.standard_normal((8, 3, 1, 1)).astype(np.float32)
    bias = rng.standard_normal((8, 1, 1)).astype(np.float32)
    inputs, outputs = gemm.conv2d_epilogue(x.shape, f.shape, (2, 8, 3, 5), (1, 1), (0, 0),
                                              epilogue, "float32")
    target = make_target("llvm")
    kernel = compile_module(inputs, outputs, "conv_gemm", target, "conv")["conv"]
    out = tvm.runtime.empty((2, 8, 3, 5), "float32")
    kernel(tvm.runtime.tensor(x), tvm.runtime.tensor(f), tvm.runtime.tensor(bias), out)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(f)).numpy() + bias
    expected = np.clip(expected, *constants) if label == "clip" else np.maximum(expected, 0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    script = scheduled_module(inputs, outputs, "conv_gemm", target, "conv").script()
    loops = [line.strip() for line in script.splitlines() if "for " in line]
    # The write-back's loops come last: over the tile's 8 channels, then its 15 positions.
    assert ("for ax1 in T.unroll(8):" in loops[-3:]) is (label == "clip")


@pytest.mark.parametrize("taps, height, width, expected", [
    (64 * 9, 56, 56, 2),      # ResNet's 56 x 56 layers: 7.2 MB of windows per image
    (3 * 49, 112, 112, 1),    # its first convolution
    (128 * 9, 28, 28, 4),     # its 28 x 28 layers
    (256 * 9, 14, 14, 0),     # 14 x 14: no whole rows are whole vectors and divide 14
    (6 * 25, 10, 10, 0),      # LeNet's second convolution: copied whole, in L2
])
def test_wide_layers_take_row_panels(taps, height, width, expected):
    assert conv_schedule.row_panel(taps, height, width, 16, "float32", AVX512) == expected


def test_images_read_once_match_pytorch(monkeypatch):
    # Each tile of positions through both tiles of 16 channels before the next.
    monkeypatch.setattr(conv_schedule, "images_pass_once", lambda *args: True)
    script = _check_against_pytorch((2, 4, 4, 8), (32, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    assert "col" not in script


@pytest.mark.parametrize("groups", [1, 2])
def test_images_read_once_in_chunks_of_channels_match_pytorch(monkeypatch, groups):
    # The image's channels in three chunks, each through both tiles of channels: the
    # accumulators are zeroed once and written back after the last chunk.
    monkeypatch.setattr(conv_schedule, "images_pass_once", lambda *args: True)
    monkeypatch.setattr(conv_schedule, "reduction_chunks", lambda *args: 3)
    script = _check_against_pytorch((2, 12, 4, 8), (32, 12 // groups, 1, 1), (1, 1), (0, 0),
                                    (1, 1), groups)
    assert "col" not in script and "T.grid(3, 2, " in script


@pytest.mark.parametrize("in_channels, channels, chunks", [
    (192, 32, 2),   # MobileNet v2's 192 -> 32 layer: 37 kB of filters and vectors, halved
    (144, 24, 1),   # its 144 -> 24 one: 23 kB fit L1
    (7, 4096, 7),   # no chunk fits: one channel each
])
def test_reduction_chunks_fit_l1(in_channels, channels, chunks):
    assert conv_schedule.reduction_chunks(in_channels, channels, "float32", AVX512) == chunks


@pytest.mark.parametrize("channels, in_channels, positions, expected", [
    (24, 144, 56 * 56, True),    # MobileNet v2's projection: 1.8 MB images, 2 tiles
    (32, 192, 28 * 28, True),    # 0.6 MB images, 2 tiles
    (32, 144, 28 * 28, False),   # 0.45 MB images stay in L2
    (96, 16, 112 * 112, False),  # its expansion: 6 tiles of channels, 96 output streams
    (16, 32, 112 * 112, False),  # one tile of channels: each image is read once anyway
])
def test_images_larger_than_l2_read_once(channels, in_channels, positions, expected):
    tile = conv_schedule.gemm_tile(channels, positions, "float32", AVX512)
    image_bytes = in_channels * positions * 4
    assert conv_schedule.images_pass_once(channels, tile.rows, image_bytes, AVX512) is expected


@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_reads_images_in_place(groups):
    # 4 x 8 positions: two whole vectors of 16, so no window is copied.
    script = _check_against_pytorch((2, 4, 4, 8), (6, 4 // groups, 1, 1), (1, 1), (0, 0),
                                    (1, 1), groups)
    assert "col" not in script and "pad" not in script


@pytest.mark.parametrize("padding", [(0, 0), (1, 2)])
def test_pointwise_with_a_partial_tile_copies_once(padding):
    # 3 x 5 positions pad to a vector: the images are copied with zeros past them (and
    # around them), and that copy is read in place, with no second copy of windows.
    script = _check_against_pytorch((1, 3, 3, 5), (4, 3, 1, 1), (1, 1), padding, (1, 1), 1)
    assert "pad" in script and "col" not in script


@pytest.mark.parametrize("taps, positions, expected", [
    (3 * 49, 112 * 112, True),   # ResNet's first convolution: 7.4 MB of windows per image
    (64 * 9, 56 * 56, False),    # its 56 x 56 layers: as many bytes, but 576 taps
    (128 * 9, 28 * 28, False),   # 3.6 MB: copied whole, as before
    (6 * 25, 10 * 10, False),    # LeNet's second convolution
])
def test_wide_layers_take_panels(taps, positions, expected):
    assert conv_schedule.col_in_panels(taps, positions, "float32", AVX512) is expected


def test_wide_layers_take_one_vector_tiles():
    # 3136 positions are whole tiles of 1, 2 or 4 vectors: 16 channels x 1 vector wins.
    tile = conv_schedule.gemm_tile(64, 56 * 56, "float32", AVX512)
    assert (tile.rows, tile.vectors, tile.lanes) == (16, 1, 16)
