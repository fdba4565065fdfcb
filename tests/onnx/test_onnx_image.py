"""ONNX's Resize and Upsample (dlsys/onnx/ops_image.py): one small model each (cubic,
antialias and tf_crop_and_resize among them), run by dlsys and compared with onnxruntime
within 1e-4, PyTorch's own exports of F.interpolate (and
their gradients), and what dlsys refuses, naming the node."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from onnx_testing import assert_matches_onnxruntime, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402


def floats(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def ints(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def resize(inputs=("x", "", "s"), **attrs):
    return helper.make_node("Resize", list(inputs), ["y"], **attrs)


# name -> (node, initializers): an image ("N", 2, 3, 4) resized.
CASES = {
    "nearest_scales_default_modes": (resize(), {"s": floats(1, 1, 2, 1.5)}),
    "nearest_sizes_asymmetric_floor": (
        resize(("x", "", "", "z"), coordinate_transformation_mode="asymmetric",
               nearest_mode="floor"), {"z": ints(2, 2, 7, 9)}),
    "nearest_axes_round_prefer_ceil": (
        resize(("x", "", "", "z"), axes=[3, 2], nearest_mode="round_prefer_ceil"),
        {"z": ints(6, 5)}),
    "linear_upsample_half_pixel": (resize(mode="linear"), {"s": floats(1, 1, 2, 2)}),
    "linear_downsample_pytorch_half_pixel": (
        resize(("x", "", "", "z"), mode="linear",
               coordinate_transformation_mode="pytorch_half_pixel"), {"z": ints(2, 2, 2, 1)}),
    "linear_align_corners_sizes": (
        resize(("x", "", "", "z"), mode="linear", coordinate_transformation_mode="align_corners"),
        {"z": ints(2, 2, 5, 7)}),
    # Resampled by weight matrices (ops_image.resample_by_matrices):
    "cubic_upsample_half_pixel": (resize(mode="cubic"), {"s": floats(1, 1, 2, 1.5)}),
    "cubic_exclude_outside_align_corners": (
        resize(("x", "", "", "z"), mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1,
               coordinate_transformation_mode="align_corners"), {"z": ints(2, 2, 5, 3)}),
    "linear_antialias_downsample": (resize(mode="linear", antialias=1),
                                    {"s": floats(1, 1, 0.7, 0.5)}),
    "cubic_antialias_downsample": (resize(("x", "", "", "z"), mode="cubic", antialias=1),
                                   {"z": ints(2, 2, 2, 3)}),
    "tf_crop_and_resize_extrapolated": (
        resize(("x", "r", "", "z"), mode="linear", extrapolation_value=-2.0,
               coordinate_transformation_mode="tf_crop_and_resize"),
        {"r": floats(0, 0, -0.2, 0.1, 1, 1, 0.8, 1.3), "z": ints(2, 2, 4, 5)}),
}


@pytest.mark.parametrize("case", CASES)
def test_resize_matches_onnxruntime(case):
    node, initializers = CASES[case]
    proto = model([node], {"x": ("N", 2, 3, 4)}, {"y": None}, initializers, opset=19)
    assert_matches_onnxruntime(proto, {"x": normal((2, 2, 3, 4))})


def test_upsample_of_an_old_opset_is_converted():
    """Upsample (opset 9) reaches dlsys as a Resize, through ONNX's version converter."""
    node = helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 12])],
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    assert_matches_onnxruntime(proto, {"x": normal((1, 2, 3, 4))})


class _Upsampling:
    """A convolution followed by F.interpolate, as PyTorch's exporter writes it."""

    @staticmethod
    def export(torch, opset: int, **options) -> bytes:
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)

            def forward(self, x):
                return torch.nn.functional.interpolate(self.conv(x), **options)

        torch.manual_seed(0)
        buffer = io.BytesIO()
        torch.onnx.export(Net().eval(), (torch.zeros(2, 2, 4, 5),), buffer, dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=opset)
        return buffer.getvalue()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("opset, options", [
    (11, {"scale_factor": 2, "mode": "nearest"}),  # an empty roi constant
    (17, {"size": (7, 9), "mode": "bilinear", "align_corners": True}),  # sizes from shapes
])
def test_pytorch_exports_match_onnxruntime(opset, options):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    data = _Upsampling.export(torch, opset, **options)
    x = normal((3, 2, 4, 5))
    ours = donnx.InferenceSession(data).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None,
                                                                                {"x": x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_imported_upsampling_fine_tunes(mode):
    """The imported model's gradients (through the resize's adjoint, or the bicubic's
    weight matrices) are PyTorch's."""
    torch = pytest.importorskip("torch")
    from dlsys import autodiff as ad

    data = _Upsampling.export(torch, 17, scale_factor=2, mode=mode, align_corners=False)
    module = donnx.import_model(data).train()
    x, upstream = ad.Variable("x"), ad.Variable("upstream")
    params = module.parameters()
    grads = ad.gradients(ad.sum_op(module(x) * upstream), params)
    x_value, weights = normal((2, 2, 4, 5)), normal((2, 3, 8, 10), 1)
    got = ad.Executor(grads).run({x: x_value, upstream: weights},
                                 convert_to_numpy_ret_vals=True)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        for p, value in zip(conv.parameters(), params):
            p.copy_(torch.tensor(value.data.numpy()))
    out = torch.nn.functional.interpolate(conv(torch.tensor(x_value)), scale_factor=2,
                                          mode=mode, align_corners=False)
    (out * torch.tensor(weights)).sum().backward()
    for mine, p in zip(got, conv.parameters()):
        np.testing.assert_allclose(mine, p.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("node, initializers, message", [
    (resize(mode="area"), {"s": floats(1, 1, 2, 2)}, "mode 'area' is not supported"),
    (resize(("x", "", "", "z"), mode="linear", axes=[2, 3],
            coordinate_transformation_mode="tf_crop_and_resize"),
     {"z": ints(2, 2)}, "tf_crop_and_resize needs the roi input"),
    (resize(("x", "", "s", "z")), {"s": floats(1, 1, 2, 2), "z": ints(2, 2, 6, 8)},
     "exactly one of scales and sizes"),
    (resize(("x", "", "", "z"), axes=[2, 3]), {"z": ints(2, 2, 6, 8)},
     "one value per resized axis"),
])
def test_refusals_name_the_node(node, initializers, message):
    proto = model([node], {"x": ("N", 2, 3, 4)}, {"y": ("N", 2, 6, 8)}, initializers,
                  opset=19)
    with pytest.raises(OnnxError, match=message) as err:
        donnx.import_model(proto)
    assert "Resize node 'y'" in str(err.value)


def test_scales_computed_at_run_time_are_refused():
    nodes = [helper.make_node("Relu", ["t"], ["s"]), resize(("x", "", "s"))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 4]),
                     helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 8])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)],
                              ir_version=9)
    with pytest.raises(OnnxError, match="scales .* must be fixed when the graph is built"):
        donnx.import_model(proto)


# name -> (node, float inputs (name -> shape), initializers, opset): the image layout ops.
LAYOUT_CASES = {
    "affine_grid_2d": (helper.make_node("AffineGrid", ["t", "z"], ["y"]), {"t": ("N", 2, 3)},
                       {"z": ints(2, 3, 4, 5)}, 20),
    "affine_grid_3d_align_corners": (
        helper.make_node("AffineGrid", ["t", "z"], ["y"], align_corners=1),
        {"t": ("N", 3, 4)}, {"z": ints(2, 1, 2, 3, 4)}, 20),
    "center_crop_pad": (helper.make_node("CenterCropPad", ["x", "z"], ["y"], axes=[1, 2]),
                        {"x": (2, 5, 4)}, {"z": ints(2, 7)}, 18),
    "col2im_strided_padded": (
        helper.make_node("Col2Im", ["x", "i", "b"], ["y"], strides=[2, 1], pads=[1, 0, 1, 1],
                         dilations=[1, 2]),
        {"x": (2, 6, 9)}, {"i": ints(5, 4), "b": ints(3, 2)}, 18),
    "grid_sample_border": (
        helper.make_node("GridSample", ["x", "g"], ["y"], mode="linear", padding_mode="border",
                         align_corners=1),
        {"x": (2, 3, 4, 5), "g": (2, 3, 2, 2)}, {}, 20),
}


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_image_layout_ops_match_onnxruntime(case):
    node, inputs, initializers, opset = LAYOUT_CASES[case]
    proto = model([node], inputs, {"y": None}, initializers, opset=opset)
    feeds = {name: normal(tuple(2 if d == "N" else d for d in shape), seed)
             for seed, (name, shape) in enumerate(inputs.items())}
    assert_matches_onnxruntime(proto, feeds)


def test_max_unpool_puts_values_back_where_max_pool_found_them():
    """MaxPool's values and indices unpooled (output_shape given as the unpooled shape:
    where it is larger, onnxruntime counts the indices in it, ONNX's reference and dlsys in
    the unpooled shape, then pad)."""
    pool = helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph([pool], "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2, 4, 4])], [
        helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 2, 2, 2]),
        helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2, 2, 2])])
    import onnxruntime as ort

    pooled, where = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                          ir_version=8).SerializeToString(),
        providers=["CPUExecutionProvider"]).run(None, {"x": normal((1, 2, 4, 4))})
    unpool = helper.make_node("MaxUnpool", ["p", "i", "s"], ["y"], kernel_shape=[2, 2],
                              strides=[2, 2])
    proto = model([unpool], {"p": (1, 2, 2, 2)}, {"y": (1, 2, 4, 4)},
                  {"i": where, "s": ints(1, 2, 4, 4)}, opset=18)
    assert_matches_onnxruntime(proto, {"p": pooled})
