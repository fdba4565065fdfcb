"""ONNX's convolutions and pools with the options real CNNs use (group and depthwise,
dilations, pads of each side, auto_pad, 1-d windows, ConvTranspose, ceil_mode,
count_include_pad=0, GlobalMaxPool): one-node models against onnxruntime, an imported
depthwise block fine-tuned, and the options still refused named with their node."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_testing import assert_matches_onnxruntime, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402


def conv(op_type, x_shape, w_shape, bias=True, **attrs):
    """A model of one ``op_type`` (Conv, ConvTranspose) node with weight ``w_shape``."""
    channels = w_shape[0] if op_type == "Conv" else w_shape[1] * attrs.get("group", 1)
    inits = {"w": normal(w_shape, 1)}
    if bias:
        inits["b"] = normal((channels,), 2)
    node = helper.make_node(op_type, ["x", *inits], ["y"], name="node0", **attrs)
    return model([node], {"x": x_shape}, {"y": None}, inits)


def pool(op_type, x_shape, opset=17, **attrs):
    node = helper.make_node(op_type, ["x"], ["y"], name="node0", **attrs)
    return model([node], {"x": x_shape}, {"y": None}, opset=opset)


CASES = {
    "conv_grouped": lambda: conv("Conv", ("N", 4, 7, 6), (6, 2, 3, 3), group=2, pads=[1] * 4),
    "conv_depthwise_s2": lambda: conv("Conv", ("N", 6, 9, 8), (6, 1, 3, 3), group=6,
                                      strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv_dilated_asymmetric": lambda: conv("Conv", ("N", 3, 9, 8), (4, 3, 3, 2),
                                            dilations=[2, 3], pads=[1, 0, 2, 3]),
    "conv_same_upper": lambda: conv("Conv", ("N", 3, 8, 7), (4, 3, 4, 3), strides=[2, 2],
                                    auto_pad="SAME_UPPER"),
    "conv_same_lower_depthwise": lambda: conv("Conv", ("N", 4, 7, 7), (4, 1, 2, 2), group=4,
                                              auto_pad="SAME_LOWER"),
    "conv_1d": lambda: conv("Conv", ("N", 3, 10), (4, 3, 3), strides=[2], pads=[1, 2]),
    "conv_transpose": lambda: conv("ConvTranspose", ("N", 4, 4, 3), (4, 3, 3, 3),
                                   strides=[2, 2], pads=[1, 0, 0, 1],
                                   output_padding=[1, 1]),
    "conv_transpose_grouped_output_shape": lambda: conv(
        "ConvTranspose", ("N", 4, 3, 3), (4, 1, 3, 3), bias=False, group=2, strides=[2, 2],
        output_shape=[8, 7]),
    "maxpool_ceil_dilated": lambda: pool("MaxPool", ("N", 2, 9, 8), kernel_shape=[2, 3],
                                         strides=[2, 2], dilations=[2, 1], ceil_mode=1),
    "maxpool_same_upper": lambda: pool("MaxPool", ("N", 2, 7, 6), kernel_shape=[3, 3],
                                       strides=[2, 2], auto_pad="SAME_UPPER"),
    "maxpool_1d": lambda: pool("MaxPool", ("N", 2, 9), kernel_shape=[3], strides=[2],
                               pads=[1, 1]),
    "avgpool_exclude_pad_ceil": lambda: pool("AveragePool", ("N", 2, 8, 7), kernel_shape=[3, 3],
                                             strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "avgpool_include_pad_ceil": lambda: pool("AveragePool", ("N", 2, 8, 7), kernel_shape=[3, 3],
                                             strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1,
                                             count_include_pad=1),
    "avgpool_dilated_exclude_pad": lambda: pool("AveragePool", ("N", 2, 9, 8),
                                                kernel_shape=[2, 3], dilations=[2, 1],
                                                pads=[1, 1, 0, 1], ceil_mode=1, opset=19),
    "global_maxpool": lambda: pool("GlobalMaxPool", ("N", 3, 5, 4)),
    "lppool_p2_pads": lambda: pool("LpPool", ("N", 2, 7, 6), kernel_shape=[3, 2],
                                   strides=[2, 1], pads=[1, 0, 0, 1]),
    "lppool_p3_1d": lambda: pool("LpPool", ("N", 2, 9), kernel_shape=[3], p=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_onnxruntime(case):
    proto = CASES[case]()
    dims = [d.dim_value or 2 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert_matches_onnxruntime(proto, {"x": normal(dims, 7) * 3})


def test_imported_depthwise_block_fine_tunes():
    """A MobileNet block (depthwise 3x3, pointwise 1x1, max pool in ceil mode): its
    parameters get gradients and a few SGD steps lower a squared error."""
    from dlsys import optim

    nodes = [helper.make_node("Conv", ["x", "dw"], ["a"], group=4, pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "pw", "pb"], ["p"]),
             helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                              ceil_mode=1)]
    inits = {"dw": normal((4, 1, 3, 3), 1), "pw": normal((3, 4, 1, 1), 2),
             "pb": normal((3,), 3)}
    module = donnx.import_model(model(nodes, {"x": ("N", 4, 5, 5)}, {"y": None}, inits))
    x, target = ad.Variable("x"), ad.Variable("target")
    module.train()
    error = module(x) - target
    step = optim.SGD(module.parameters(), lr=0.01).minimize(ad.sum_op(error * error))
    feeds = {x: normal((2, 4, 5, 5), 4), target: normal((2, 3, 3, 3), 5)}
    before = module.state_dict()
    losses = [step(feeds) for _ in range(5)]
    assert losses[-1] < losses[0], losses
    assert all(not np.array_equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("build, named", [
    (lambda: conv("Conv", ("N", 4, 6, 6), (6, 3, 3, 3), group=2), "group=2"),
    (lambda: conv("Conv", ("N", 2, 4, 4, 4), (3, 2, 2, 2, 2)), "(3, 2, 2, 2, 2)"),
    (lambda: pool("MaxPool", ("N", 2, 4, 4, 4), kernel_shape=[2, 2, 2]), "1-d and 2-d"),
    (lambda: conv("Conv", ("N", 3, "H", "W"), (4, 3, 3, 3), auto_pad="SAME_UPPER"),
     "auto_pad='SAME_UPPER' needs the image's size"),
])
def test_unsupported_values_are_named_with_their_node(build, named):
    with pytest.raises(donnx.OnnxError) as err:
        donnx.import_model(build())
    assert named in str(err.value) and "node0" in str(err.value)
