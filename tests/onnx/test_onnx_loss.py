"""ONNX's losses (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss) and RMSNormalization
imported by dlsys: small models against onnxruntime within 1e-4, a refused reduction, and
fine-tuning through them against PyTorch's gradients."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_testing import TOLERANCE, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402

# RMSNormalization came with opset 23; the losses exist from 13 on, the same there.
OPSET, IR_VERSION = 23, 10


def _model(nodes, inputs: dict, outputs: list[str], initializers: dict | None = None):
    """A model of ``nodes`` whose inputs are ``name -> (elem_type, shape)`` (integer targets
    among them), its outputs' types and shapes left to ONNX's inference."""
    graph = helper.make_graph(
        nodes, "loss", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return proto


def _matches_onnxruntime(proto, feeds: dict) -> None:
    data = proto.SerializeToString()
    ours = donnx.InferenceSession(data).run(None, feeds)
    theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE)


def _targets(shape, classes: int, ignore_index: int | None, seed: int) -> np.ndarray:
    targets = np.random.default_rng(seed).integers(0, classes, size=shape).astype(np.int64)
    if ignore_index is not None:
        targets.reshape(-1)[::3] = ignore_index  # every third position ignored
    return targets


# (op type, scores' shape, reduction, class weights, ignore_index, log_prob output)
LOSS_CASES = [
    ("NegativeLogLikelihoodLoss", (4, 5), "mean", True, 2, False),
    ("NegativeLogLikelihoodLoss", (2, 3, 4), "none", False, None, False),
    ("SoftmaxCrossEntropyLoss", (2, 4, 3, 2), "mean", False, -1, True),
    ("SoftmaxCrossEntropyLoss", (3, 5), "sum", True, None, False),
]


@pytest.mark.parametrize("op_type,shape,reduction,weighted,ignore_index,log_prob", LOSS_CASES)
def test_losses_match_onnxruntime(op_type, shape, reduction, weighted, ignore_index, log_prob):
    classes = shape[1]
    target_shape = (shape[0], *shape[2:])
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    inputs = {"x": (TensorProto.FLOAT, shape), "t": (TensorProto.INT64, target_shape)}
    feeds = {"x": normal(shape), "t": _targets(target_shape, classes, ignore_index, 1)}
    if weighted:
        inputs["w"] = (TensorProto.FLOAT, (classes,))
        feeds["w"] = np.abs(normal((classes,), 2)) + 0.1
    outputs = ["loss", "log_prob"] if log_prob else ["loss"]
    node = helper.make_node(op_type, list(inputs), outputs, **attrs)
    _matches_onnxruntime(_model([node], inputs, outputs), feeds)


def test_an_unknown_reduction_is_refused_naming_the_node():
    node = helper.make_node("NegativeLogLikelihoodLoss", ["x", "t"], ["loss"],
                            reduction="median")
    inputs = {"x": (TensorProto.FLOAT, (2, 3)), "t": (TensorProto.INT64, (2,))}
    graph = helper.make_graph([node], "loss", [
        helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, ())])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    with pytest.raises(OnnxError, match=r"NegativeLogLikelihoodLoss node 'loss'.*'median'"):
        donnx.import_model(proto)


@pytest.mark.parametrize("axis,scale_shape", [(-1, (6,)), (1, (1, 6))])
def test_rms_normalization_matches_onnxruntime(axis, scale_shape):
    node = helper.make_node("RMSNormalization", ["x", "scale"], ["y"], axis=axis,
                            epsilon=1e-3)
    inputs = {"x": (TensorProto.FLOAT, (2, 3, 6)), "scale": (TensorProto.FLOAT, scale_shape)}
    feeds = {"x": normal((2, 3, 6)), "scale": normal(scale_shape, 1)}
    _matches_onnxruntime(_model([node], inputs, ["y"]), feeds)


def test_fine_tuning_through_rms_norm_and_softmax_cross_entropy():
    """Logits from a product and an RMS norm, under a weighted softmax cross-entropy that
    ignores some targets: the gradients in the product's weight and the norm's scale equal
    PyTorch's (``F.cross_entropy`` with the same weights and ignore_index)."""
    torch = pytest.importorskip("torch")
    classes, ignore_index = 5, 1
    inits = {"w": normal((4, classes), 1), "scale": normal((classes,), 2),
             "cw": np.abs(normal((classes,), 3)) + 0.1}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("RMSNormalization", ["h", "scale"], ["logits"]),
             helper.make_node("SoftmaxCrossEntropyLoss", ["logits", "t", "cw"], ["loss"],
                              ignore_index=ignore_index)]
    inputs = {"x": (TensorProto.FLOAT, ("N", 4)), "t": (TensorProto.INT64, ("N",))}
    module = donnx.import_model(_model(nodes, inputs, ["loss"], inits)).train()
    x, t = ad.Variable("x"), ad.Variable("t")
    params = dict(module.named_parameters())
    grads = ad.gradients(module(x, t), [params["w"], params["scale"]])
    x_value, t_value = normal((6, 4), 4), _targets((6,), classes, ignore_index, 5)
    got = ad.Executor(grads).run({x: x_value, t: t_value}, convert_to_numpy_ret_vals=True)

    tw, ts = (torch.tensor(inits[n], requires_grad=True) for n in ("w", "scale"))
    h = torch.tensor(x_value) @ tw
    logits = h / torch.sqrt((h * h).mean(1, keepdim=True) + 1e-5) * ts
    torch.nn.functional.cross_entropy(logits, torch.tensor(t_value),
                                      weight=torch.tensor(inits["cw"]),
                                      ignore_index=ignore_index).backward()
    for g, expected in zip(got, (tw.grad, ts.grad)):
        np.testing.assert_allclose(g, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_losses_and_rms_norm_of_constants_are_folded():
    """Scores and targets fixed by the file (Constant nodes): the loss, and an RMS norm of
    constants, are computed while the graph is built; a fed value is added after."""
    x, t = normal((3, 4)), np.array([0, 2, 3], np.int64)
    constants = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a))
                 for name, a in (("xc", x), ("tc", t), ("sc", normal((4,), 1)))]
    nodes = [*constants,
             helper.make_node("SoftmaxCrossEntropyLoss", ["xc", "tc"], ["l"], ignore_index=2),
             helper.make_node("RMSNormalization", ["xc", "sc"], ["r"]),
             helper.make_node("Add", ["l", "b"], ["y"]),
             helper.make_node("Add", ["r", "b"], ["z"])]
    proto = _model(nodes, {"b": (TensorProto.FLOAT, (1,))}, ["y", "z"])
    _matches_onnxruntime(proto, {"b": np.ones(1, np.float32)})
