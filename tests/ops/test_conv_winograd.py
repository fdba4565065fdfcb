"""Winograd's minimal filtering for constant 3 x 3 stride-1 filters (``winograd_filters``,
``conv2d_winograd``): the transforms' identity, the transformed filters against the
operator's numpy reference, the convolution against numpy for planes that are no multiple of
the tile, padding 1 and 0, each epilogue step, one image and several, F(2, 3) and F(4, 3),
and unscheduled (``DLSYS_SCHEDULE=naive``); the rule (Winograd for ResNet's 3 x 3 stride-1
layers, F(2, 3) on 7 x 7 planes, not at stride 2, for 1 x 1 filters or few channels); and an
executor transforming constant filters once but not a dilated, grouped or trained layer's."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ShapeError
from dlsys.kernels.common.epilogue import EPILOGUE_LABELS
from dlsys.kernels.conv import winograd
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.conv import conv2d_op, winograd_filters_op
from dlsys.ops.placeholder import Parameter, Variable

BIAS, RESIDUAL, RELU = (EPILOGUE_LABELS[name] for name in ("channel_bias_add", "add", "relu"))


def _tensor(array: np.ndarray):
    return tvm.runtime.tensor(np.ascontiguousarray(array))


@pytest.mark.parametrize("tile", sorted(winograd.TRANSFORMS))
def test_transforms_compute_each_tile_of_a_correlation(tile):
    rng = np.random.default_rng(tile)
    b_t, g, a_t = winograd.transforms(tile)
    d = rng.standard_normal((tile + 2, tile + 2))
    f = rng.standard_normal((3, 3))
    tiled = a_t @ ((g @ f @ g.T) * (b_t @ d @ b_t.T)) @ a_t.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * f) for j in range(tile)]
                       for i in range(tile)])
    np.testing.assert_allclose(tiled, direct, rtol=1e-12, atol=1e-12)


def _transformed(w: np.ndarray, tile: int, panel: int) -> np.ndarray:
    """``w`` transformed by its kernel, checked against the operator's reference."""
    node = winograd_filters_op(Variable("w"), tile, panel)
    expected = node.op.reference(node, w)
    assert expected.shape == node.op.infer_shape(node, [w.shape])
    kernel = KernelSpec("winograd_filters", (w.shape, tile, panel)).build("llvm", str(w.dtype))
    out = tvm.runtime.empty(expected.shape, str(w.dtype))
    kernel.func(_tensor(w), out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    return out.numpy()


def test_filters_are_transformed_per_point_in_zero_filled_panels():
    w = np.random.default_rng(0).standard_normal((20, 3, 3, 3)).astype("float32")
    points = _transformed(w, 4, 16)
    assert points.shape == (36, 2, 3, 16)
    # The first point is G's first row twice: a quarter of a quarter of the filter's corner.
    np.testing.assert_allclose(points[0, 0, :, :16], w[:16, :, 0, 0].T / 16, rtol=1e-6)
    assert not points[:, 1, :, 4:].any()


def test_filters_other_than_3_x_3_are_refused():
    node = winograd_filters_op(Variable("w"), 4, 16)
    with pytest.raises(ShapeError, match="3 x 3"):
        node.op.infer_shape(node, [(16, 8, 5, 5)])


# (batch, channels in, size, channels out, padding, layout, epilogue): planes that are no
# multiple of the tile (odd and even), with and without padding, each epilogue step, one
# image and several, both tiles, register tiles of one and two vectors of channels, of a
# row of tiles, of whole rows and of a whole image, blocks of two images.
CASES = [(1, 5, 7, 16, 1, (4, 1, 2, 1, 16), (BIAS,)),
         (2, 6, 10, 32, 0, (4, 1, 2, 2, 16), (BIAS, RESIDUAL, RELU)),
         (3, 4, 9, 20, 1, (2, 5, 5, 1, 16), (RELU,)),
         (2, 8, 6, 32, 1, (2, 3, 9, 2, 16), ()),
         (4, 3, 7, 16, 1, (4, 2, 4, 1, 16, 2), (BIAS, RELU))]


def _expected(x, w, padding, epilogue, operands):
    node = conv2d_op(Variable("x"), Variable("w"), 1, padding)
    y = node.op.reference(node, x.astype(np.float64), w.astype(np.float64))
    remaining = list(operands)
    for step in epilogue:
        y = np.maximum(y, 0) if step is RELU else y + remaining.pop(0)
    return y


def _operands(rng, epilogue, channels, shape_y):
    return [rng.standard_normal((channels, 1, 1) if step is BIAS else shape_y).astype("float32")
            for step in epilogue if step is not RELU]


def _run(x, w, padding, layout, epilogue, operands, shape_y):
    tile, panel = layout[0], layout[3] * layout[4]
    spec = KernelSpec("conv2d_winograd", (x.shape, w.shape, shape_y, (1, 1),
                                          (padding, padding), layout, epilogue))
    out = tvm.runtime.empty(shape_y, "float32")
    spec.build("llvm", "float32").func(_tensor(x), _tensor(_transformed(w, tile, panel)),
                                       *map(_tensor, operands), out)
    return out.numpy()


@pytest.mark.parametrize("batch,c,size,o,padding,layout,epilogue", CASES)
def test_kernel_matches_numpy(batch, c, size, o, padding, layout, epilogue):
    rng = np.random.default_rng(batch * o + size)
    x = rng.standard_normal((batch, c, size, size)).astype("float32")
    w = rng.standard_normal((o, c, 3, 3)).astype("float32")
    shape_y = (batch, o, size + 2 * padding - 2, size + 2 * padding - 2)
    operands = _operands(rng, epilogue, o, shape_y)
    got = _run(x, w, padding, layout, epilogue, operands, shape_y)
    np.testing.assert_allclose(got, _expected(x, w, padding, epilogue, operands),
                               rtol=1e-4, atol=1e-4)


def test_padding_only_at_the_start_as_onnx_allows():
    # ONNX pads each side on its own; the kernel reads the start and the output's extent.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8, 8)).astype("float32")
    w = rng.standard_normal((16, 4, 3, 3)).astype("float32")
    node = conv2d_op(Variable("x"), Variable("w"), 1, 1, padding_end=0)
    expected = node.op.reference(node, x, w)
    assert expected.shape == (2, 16, 7, 7)
    got = _run(x, w, 1, (4, 1, 2, 1, 16), (), [], expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_unscheduled_kernel_matches_numpy(monkeypatch):
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 5, 5)).astype("float32")
    w = rng.standard_normal((16, 3, 3, 3)).astype("float32")
    got = _run(x, w, 1, (4, 1, 2, 1, 16), (), [], (1, 16, 5, 5))
    np.testing.assert_allclose(got, _expected(x, w, 1, (), []), rtol=1e-4, atol=1e-4)


def test_kernel_refuses_a_strided_convolution_and_tiles_across_rows():
    with pytest.raises(ShapeError, match="stride"):
        winograd.conv2d_winograd((1, 32, 8, 8), (32, 32, 3, 3), (1, 32, 4, 4), (2, 2), (1, 1),
                                 (4, 1, 2, 2, 16), (), "float32")
    # Six tiles of a 4 x 4 grid are a row and a half: their write-back would cover two rows.
    with pytest.raises(ShapeError, match="whole blocks"):
        winograd.conv2d_winograd((1, 32, 16, 16), (32, 32, 3, 3), (1, 32, 16, 16), (1, 1),
                                 (1, 1), (4, 3, 6, 2, 16), (), "float32")


def _layout(c, size, o, batch=32, kernel=3, stride=1):
    out = (size + 2 - kernel) // stride + 1
    return winograd.winograd_layout((batch, c, size, size), (o, c, kernel, kernel),
                                    (batch, o, out, out), (stride, stride), "float32")


def test_rule_takes_resnet_3_x_3_layers_and_leaves_the_rest():
    for c, size in ((64, 56), (128, 28), (256, 14)):
        assert _layout(c, size, c).tile == 4
    # Four tiles of F(4, 3) per 7 x 7 image: eight images a block at batch 32; one image
    # alone would read every transformed filter too often, so F(2, 3) at batch 1.
    plan = _layout(512, 7, 512)
    assert (plan.tile, plan.images) == (4, 8) and plan.tiles % 4 == 0
    assert _layout(512, 7, 512, batch=1).tile == 2
    assert _layout(64, 56, 128, stride=2) is None
    assert _layout(64, 56, 64, kernel=1) is None
    assert _layout(3, 32, 64) is None and _layout(64, 32, 16) is None


@pytest.mark.parametrize("cores", [2, 4])
def test_rule_gives_every_core_blocks_of_whole_tile_rows(monkeypatch, cores):
    monkeypatch.setattr(winograd, "available_cpus", lambda: cores)
    plan = _layout(64, 56, 64, batch=1)
    assert 14 % plan.block_rows == 0 and 14 // plan.block_rows >= cores
    assert (plan.block_rows * 14) % plan.tiles == 0


def _steps(executor) -> list[str]:
    return [name for name, *_ in executor.storage_table()]


# Blocks of rows of tiles of one image, and (7 x 7 planes, four tiles each) of two images.
@pytest.mark.parametrize("batch,size,per_block", [(2, 9, 1), (4, 7, 2)])
def test_executor_transforms_constant_filters_once_and_sees_them_change(monkeypatch, batch,
                                                                       size, per_block):
    monkeypatch.setattr(winograd, "available_cpus", lambda: 2)
    shape = (batch, 32, size, size)
    assert _layout(32, size, 32, batch=batch).images == per_block
    rng = np.random.default_rng(3)
    layer = nn.Conv2d(32, 32, 3, padding=1)
    x = ad.Variable("x")
    executor = ad.Executor([ad.relu_op(layer(x))], constants=layer.parameters())
    images = rng.standard_normal(shape).astype("float32")

    def expected():
        weight, bias = (p.numpy() for p in layer.parameters())
        node = conv2d_op(Variable("x"), Variable("w"), 1, 1)
        return np.maximum(node.op.reference(node, images, weight) + bias[:, None, None], 0)

    def check(value, want):
        # F(4, 3) rounds at about 1e-5 of the output's scale (its transforms' 4s and 8s).
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    (value,) = executor.run({x: images}, convert_to_numpy_ret_vals=True)
    check(value, expected())
    assert sum(name.startswith("WinogradFilters") for name in _steps(executor)) == 1
    weight = layer.parameters()[0]
    weight.assign(rng.standard_normal(weight.shape).astype("float32"))
    (value,) = executor.run({x: images}, convert_to_numpy_ret_vals=True)
    check(value, expected())


@pytest.mark.parametrize("options", [{"dilation": 2}, {"groups": 2}, None])
def test_dilated_grouped_and_trained_filters_are_not_transformed(options):
    x = ad.Variable("x")
    per_group = 16 if options == {"groups": 2} else 32
    w = Parameter(np.ones((32, per_group, 3, 3), "float32"), "w")
    y = conv2d_op(x, w, 1, 2 if options == {"dilation": 2} else 1, **(options or {}))
    # Filters that are no constant (a training step's) are read as stored.
    executor = ad.Executor([y], constants=None if options is None else [w])
    executor.run({x: np.ones((1, 32, 8, 8), "float32")})
    assert not any(name.startswith("WinogradFilters") for name in _steps(executor))
