"""The convolution schedules' register tiles, chosen for AVX2's 16 registers and AVX-512's 32
without either CPU: every tile fits its register file and divides the channels."""

import pytest

from dlsys.kernels.conv import schedule as conv
from dlsys.kernels.cpu import CpuFacts

AVX2 = CpuFacts("znver3", vector_bytes=32, vector_registers=16)
AVX512 = CpuFacts("znver4", vector_bytes=64, vector_registers=32)


@pytest.mark.parametrize("cpu, expected", [(AVX512, (16, 1, 16)), (AVX2, (8, 1, 8))])
def test_lenet_second_convolution_tiles(cpu, expected):
    tile = conv.gemm_tile(16, 100, "float32", cpu)
    assert (tile.rows, tile.vectors, tile.lanes) == expected


@pytest.mark.parametrize("cpu", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("channels", [1, 3, 6, 16, 32, 64, 100])
@pytest.mark.parametrize("positions", [1, 7, 100, 196, 784])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_tiles_fit_the_register_file(cpu, channels, positions, dtype):
    tile = conv.gemm_tile(channels, positions, dtype, cpu)
    assert channels % tile.rows == 0
    assert tile.rows * tile.vectors + tile.vectors + 1 <= cpu.vector_registers
    assert tile.lanes == cpu.lanes(dtype)
    # No tile pads the positions more than the one-vector tile would.
    one_vector = -(-positions // tile.lanes) * tile.lanes
    assert -(-positions // tile.columns) * tile.columns == one_vector


@pytest.mark.parametrize("cpu, width, expected", [(AVX512, 5, 4), (AVX2, 5, 1), (AVX512, 3, 4),
                                                  (AVX2, 3, 2)])
def test_weight_tiles_fit_the_register_file(cpu, width, expected):
    rows = conv.weight_tile_rows(16, width, cpu)
    assert rows == expected
    assert rows * width + rows + width <= cpu.vector_registers


@pytest.mark.parametrize("cpu, expected", [(AVX512, (2, 7)), (AVX2, (3, 2))])
def test_lenet_input_gradient_tiles(cpu, expected):
    # LeNet's second convolution taken back to its 6 channels of 14 x 14.
    assert conv.direct_tile(6, 14, cpu) == expected


@pytest.mark.parametrize("cpu", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("channels", [1, 3, 6, 32])
@pytest.mark.parametrize("height", [1, 7, 14, 28])
def test_direct_tiles_fit_the_register_file(cpu, channels, height):
    tile_c, tile_r = conv.direct_tile(channels, height, cpu)
    assert channels % tile_c == 0 and height % tile_r == 0
    assert tile_c * tile_r <= cpu.vector_registers // 2
    assert tile_c * tile_r + tile_r + 2 <= cpu.vector_registers


@pytest.mark.parametrize("batch", [1, 2, 15, 16, 17, 20, 33, 100, 256])
def test_weight_gradient_chunks_cover_the_batch_with_little_padding(batch):
    # The batch is cut into even chunks of at most WEIGHT_CHUNK_IMAGES; the zero images
    # that pad it, multiplied as real ones, are fewer than one per chunk.
    partials, per_partial, chunk = conv.weight_partials(batch)
    chunks = partials * per_partial
    assert chunk <= conv.WEIGHT_CHUNK_IMAGES
    assert batch <= chunks * chunk < batch + chunks
