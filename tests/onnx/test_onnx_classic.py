"""The ONNX model zoo's classic CNNs at their old opsets: small graphs in the style of the
Caffe2-converted zoo files (AlexNet/ZFNet, GoogLeNet's Inception block, VGG), built with
onnx.helper at opsets 7 to 9, and torchvision's AlexNet and VGG-11 exported at opset 9; run
by dlsys, whose import converts the old opsets, and by onnxruntime, the reference."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_testing import TOLERANCE, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402

# The IR version of the zoo's files of each old opset (onnxruntime reads them all).
OLD_IR_VERSION = {7: 3, 8: 3, 9: 4}
# The zoo's Caffe models read mean-subtracted pixel values, not unit-sized ones: at that
# size LRN (alpha 1e-4) normalises for real, where at unit size it is nearly the identity.
PIXEL_SCALE = 50.0


class GraphBuilder:
    """Nodes and seeded random initializers of one model, named as the zoo's files name
    them (``conv1_w_0`` ...), so that a graph reads like its Caffe layer list."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: dict[str, np.ndarray] = {}

    def weight(self, name: str, shape: tuple, fan_in: int, gain: float = 1.0) -> str:
        # Scaled by the fan-in so that activations keep their size through the stack and a
        # relative tolerance means the same at every depth.
        self.initializers[name] = (gain * self.rng.normal(size=shape) / np.sqrt(fan_in)
                                   ).astype(np.float32)
        return name

    def node(self, op_type: str, inputs: list, name: str, outputs: int = 1, **attrs) -> str:
        names = [name] + [f"{name}_extra{i}" for i in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attrs))
        return name

    def conv_relu(self, x: str, name: str, in_channels: int, out_channels: int, kernel: int,
                  stride: int = 1, pad: int = 0) -> str:
        """Conv with bias and symmetric pads, then Relu: the zoo's conv layer."""
        fan_in = in_channels * kernel * kernel
        w = self.weight(f"{name}_w_0", (out_channels, in_channels, kernel, kernel), fan_in)
        b = self.weight(f"{name}_b_0", (out_channels,), 1)
        conv = self.node("Conv", [x, w, b], f"{name}_1", kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[pad] * 4)
        return self.node("Relu", [conv], f"{name}_2")

    def lrn(self, x: str, name: str) -> str:
        return self.node("LRN", [x], name, size=5, alpha=1e-4, beta=0.75, bias=1.0)

    def max_pool(self, x: str, name: str, kernel: int, stride: int, pad: int = 0) -> str:
        attrs = {"pads": [pad] * 4} if pad else {}
        return self.node("MaxPool", [x], name, kernel_shape=[kernel, kernel],
                         strides=[stride, stride], **attrs)

    def dense(self, x: str, name: str, in_features: int, out_features: int,
              gain: float = 1.0) -> str:
        """Gemm with transB=1, the zoo's fully connected layer."""
        w = self.weight(f"{name}_w_0", (out_features, in_features), in_features, gain)
        b = self.weight(f"{name}_b_0", (out_features,), 1)
        return self.node("Gemm", [x, w, b], name, transB=1)

    def dropout(self, x: str, name: str) -> str:
        # Opset 7's Dropout: no is_test attribute any more, a mask output beside the data,
        # the identity at inference.
        return self.node("Dropout", [x], name, outputs=2, ratio=0.5)

    def reshape_flat(self, x: str, name: str) -> str:
        self.initializers[f"{name}_shape"] = np.array([1, -1], dtype=np.int64)
        return self.node("Reshape", [x, f"{name}_shape"], name)

    def model(self, image: tuple, output: str, classes: int, opset: int):
        # IR 3 lists every initializer among the graph's inputs too, after the image, as
        # the zoo's files do: the importer must take them as weights, not as feeds.
        inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, image)] + [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in self.initializers.items()]
        graph = helper.make_graph(
            self.nodes, "classic", inputs,
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, (1, classes))],
            [numpy_helper.from_array(a, n) for n, a in self.initializers.items()])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  ir_version=OLD_IR_VERSION[opset])
        onnx.checker.check_model(proto)
        return proto


def alexnet_like(opset: int, zfnet: bool = False):
    """bvlc_alexnet / zfnet512 in small: conv-relu-LRN-pool twice, three convs, pool,
    flatten, dense-relu-dropout twice, dense, softmax. ZFNet pads its first pool and
    flattens by Flatten rather than by Reshape."""
    g = GraphBuilder(seed=7 if zfnet else 1)
    x = g.conv_relu("data_0", "conv1", 3, 16, 5, stride=2, pad=2)      # 16 x 32 x 32
    x = g.max_pool(g.lrn(x, "norm1"), "pool1", 3, 2, pad=1 if zfnet else 0)
    side = 16 if zfnet else 15
    x = g.conv_relu(x, "conv2", 16, 24, 5, pad=2)
    x = g.max_pool(g.lrn(x, "norm2"), "pool2", 3, 2)
    side = (side - 3) // 2 + 1
    x = g.conv_relu(x, "conv3", 24, 32, 3, pad=1)
    x = g.conv_relu(x, "conv4", 32, 32, 3, pad=1)
    x = g.conv_relu(x, "conv5", 32, 16, 3, pad=1)
    x = g.max_pool(x, "pool5", 3, 2)
    side = (side - 3) // 2 + 1
    flat = 16 * side * side
    x = g.node("Flatten", [x], "flatten", axis=1) if zfnet else g.reshape_flat(x, "OC2_DUMMY")
    x = g.dropout(g.node("Relu", [g.dense(x, "fc6", flat, 64)], "fc6_2"), "drop6")
    x = g.dropout(g.node("Relu", [g.dense(x, "fc7", 64, 64)], "fc7_2"), "drop7")
    x = g.node("Softmax", [g.dense(x, "fc8", 64, 10, 1 / PIXEL_SCALE)], "prob_1")
    return g.model((1, 3, 64, 64), x, 10, opset)


def googlenet_like(opset: int):
    """bvlc_googlenet in small: a stem, one Inception-v1 block (1x1; 1x1 -> 3x3;
    1x1 -> 5x5; 3x3 max pool -> 1x1; joined on channels), global average pool, dense,
    softmax."""
    g = GraphBuilder(seed=2)
    x = g.conv_relu("data_0", "conv1", 3, 16, 7, stride=2, pad=3)      # 16 x 16 x 16
    x = g.lrn(g.max_pool(x, "pool1", 3, 2, pad=1), "norm1")             # 16 x 8 x 8
    branches = [
        g.conv_relu(x, "inception_1x1", 16, 8, 1),
        g.conv_relu(g.conv_relu(x, "inception_3x3_reduce", 16, 8, 1), "inception_3x3",
                    8, 12, 3, pad=1),
        g.conv_relu(g.conv_relu(x, "inception_5x5_reduce", 16, 4, 1), "inception_5x5",
                    4, 8, 5, pad=2),
        g.conv_relu(g.max_pool(x, "inception_pool", 3, 1, pad=1), "inception_pool_proj",
                    16, 8, 1),
    ]
    x = g.node("Concat", branches, "inception_output", axis=1)         # 36 x 8 x 8
    x = g.node("AveragePool", [x], "pool5", kernel_shape=[8, 8], strides=[1, 1])
    x = g.dropout(g.reshape_flat(x, "OC2_DUMMY"), "pool5_drop")
    x = g.node("Softmax", [g.dense(x, "loss3_classifier", 36, 10, 1 / PIXEL_SCALE)], "prob_1")
    return g.model((1, 3, 32, 32), x, 10, opset)


def vgg_like(opset: int):
    """vgg16/vgg19 in small: blocks of 3x3 convs each ending in a 2x2 max pool, then the
    dense head."""
    g = GraphBuilder(seed=3)
    x, channels = "data_0", 3
    for block, (width, depth) in enumerate([(8, 1), (16, 2), (16, 2)], start=1):
        for layer in range(1, depth + 1):
            x = g.conv_relu(x, f"conv{block}_{layer}", channels, width, 3, pad=1)
            channels = width
        x = g.max_pool(x, f"pool{block}", 2, 2)
    x = g.reshape_flat(x, "OC2_DUMMY")                                  # 16 x 4 x 4
    x = g.dropout(g.node("Relu", [g.dense(x, "fc6", 16 * 4 * 4, 32)], "fc6_2"), "drop6")
    x = g.node("Softmax", [g.dense(x, "fc8", 32, 10, 1 / PIXEL_SCALE)], "prob_1")
    return g.model((1, 3, 32, 32), x, 10, opset)


def _assert_matches_onnxruntime(data: bytes, name: str, x: np.ndarray) -> np.ndarray:
    ours = donnx.InferenceSession(data).run(None, {name: x})[0]
    theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
        None, {name: x})[0]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=TOLERANCE, atol=1e-6)
    return ours


@pytest.mark.parametrize("build,opset", [
    (alexnet_like, 7), (lambda opset: alexnet_like(opset, zfnet=True), 8),
    (googlenet_like, 9), (vgg_like, 8)], ids=["alexnet-7", "zfnet-8", "googlenet-9", "vgg-8"])
def test_zoo_style_classic_cnn_matches_onnxruntime(build, opset):
    proto = build(opset)
    side = proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    probabilities = _assert_matches_onnxruntime(proto.SerializeToString(), "data_0",
                                                PIXEL_SCALE * normal((1, 3, side, side), opset))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Random weights still spread the classes apart: a test of the whole stack, not of a
    # constant output.
    assert probabilities.max() > 2 * probabilities.min()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                            "ignore::FutureWarning")
@pytest.mark.parametrize("name,side", [("alexnet", 64), ("vgg11", 32)])
def test_torchvision_classic_export_at_opset_9_matches_onnxruntime(tmp_path, name, side):
    """At opset 9 PyTorch exports an adaptive average pool only where the output size
    divides the map, which at small images it does not (AlexNet pools 1 x 1 to 6 x 6, VGG
    to 7 x 7). The image is chosen to leave a 1 x 1 map, where that pool is the nearest
    upsampling to the same size: the model swaps one for the other (checked exact against
    torch), which exports as opset 9's Upsample. The classifier keeps its layers, but its
    4096-wide hidden ones are 256 wide: VGG's first alone would hold 400 MB of weights."""
    torch = pytest.importorskip("torch")
    from dlsys.testing import zoo

    try:
        torchvision = zoo.import_torchvision()
    except ImportError:
        pytest.skip("torchvision is not installed")
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(weights=None).eval()
    module.classifier = _narrow_hidden_layers(torch, module.classifier, width=256)
    x = normal((1, 3, side, side), 9)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
        module.avgpool = torch.nn.Upsample(size=module.avgpool.output_size, mode="nearest")
        np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), expected)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, side, side),), str(path), dynamo=False,
                      opset_version=9, input_names=["x"], output_names=["y"])
    logits = _assert_matches_onnxruntime(path.read_bytes(), "x", x)
    assert logits.shape == (1, 1000)


def _narrow_hidden_layers(torch, classifier, width: int):
    """``classifier`` (a Sequential of Dropout, Linear, ReLU) with its hidden Linear layers
    ``width`` wide: the same inputs, outputs and layers at a fraction of the weights."""
    linears = [i for i, layer in enumerate(classifier) if isinstance(layer, torch.nn.Linear)]
    layers = list(classifier)
    for i in linears:
        in_features = layers[i].in_features if i == linears[0] else width
        out_features = layers[i].out_features if i == linears[-1] else width
        layers[i] = torch.nn.Linear(in_features, out_features)
    return torch.nn.Sequential(*layers).eval()
