"""ONNX's CumSum, OneHot, EyeLike, TopK, ScatterElements, ScatterND, Compress and
ReverseSequence (dlsys/onnx/ops_misc.py): one-node models run by dlsys and by onnxruntime,
integer inputs given as initializers (constants of the graph); CumSum's and a scatter's
gradients against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_testing import normal, run_both  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402

OPSET, IR_VERSION = 18, 8


def one_node_model(op_type: str, inputs: dict, constants: dict, outputs: dict,
                   **attrs) -> onnx.ModelProto:
    """A model of one ``op_type`` node reading float ``inputs`` (name -> shape) and
    ``constants`` (initializers), with ``outputs`` (name -> type). The node reads them in
    the order given, except a scatter's, read as data "x", indices "i", updates "u"."""
    names = [*inputs, *constants]
    if "u" in names:
        names = ["x", "i", "u"]
    node = helper.make_node(op_type, names, list(outputs), **attrs)
    graph = helper.make_graph(
        [node], "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in constants.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return proto


def assert_close(proto: onnx.ModelProto, feeds: dict) -> None:
    ours, theirs = run_both(proto, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
X = normal((3, 4), 0)
X[1, 2] = X[1, 0]  # a tie: the lower index comes first

CASES = {
    "cumsum": ("CumSum", {"x": (3, 4)}, {"axis": np.array(1)}, {"y": FLOAT},
               {"exclusive": 1, "reverse": 1}),
    "one_hot": ("OneHot", {"i": (3, 4)}, {"depth": np.array(5.0, np.float32),
                                         "values": np.array([-1.0, 2.0], np.float32)},
                {"y": FLOAT}, {"axis": 1}),
    "eye_like": ("EyeLike", {"x": (3, 4)}, {}, {"y": FLOAT}, {"k": 1}),
    "top_k": ("TopK", {"x": (3, 4)}, {"k": np.array([3])}, {"v": FLOAT, "i": INT64},
              {"axis": 1}),
    "top_k_smallest": ("TopK", {"x": (3, 4)}, {"k": np.array([2])},
                       {"v": FLOAT, "i": INT64}, {"axis": 0, "largest": 0}),
    "scatter_elements_add": ("ScatterElements", {"x": (3, 4), "u": (2, 4)},
                             {"i": np.array([[0, 1, 2, 0], [0, -3, 1, 0]])}, {"y": FLOAT},
                             {"axis": 0, "reduction": "add"}),
    "scatter_elements_max": ("ScatterElements", {"x": (3, 4), "u": (3, 2)},
                             {"i": np.array([[3, 3], [0, 1], [2, 2]])}, {"y": FLOAT},
                             {"axis": 1, "reduction": "max"}),
    "scatter_nd": ("ScatterND", {"x": (3, 4), "u": (2, 4)}, {"i": np.array([[2], [0]])},
                   {"y": FLOAT}, {}),
    "compress": ("Compress", {"x": (3, 4)}, {"c": np.array([True, False, True, True])},
                 {"y": FLOAT}, {"axis": 1}),
    "reverse_sequence": ("ReverseSequence", {"x": (3, 4)}, {"n": np.array([1, 3, 2, 2])},
                         {"y": FLOAT}, {"batch_axis": 1, "time_axis": 0}),
}


@pytest.mark.parametrize("case", CASES)
def test_misc_ops_match_onnxruntime(case):
    op_type, inputs, constants, outputs, attrs = CASES[case]
    proto = one_node_model(op_type, inputs, constants, outputs, **attrs)
    feeds = {name: (X if name == "x" else normal(shape, 1)) for name, shape in inputs.items()}
    if case == "one_hot":  # whole-number indices, some negative, some out of range
        feeds["i"] = np.array([[0, 4, -1, 7], [-5, 2, 3, -6], [1, 1, 0, 4]], np.float32)
    assert_close(proto, feeds)


def test_imported_cumsum_and_scatter_gradients_match_pytorch():
    torch = pytest.importorskip("torch")
    proto = one_node_model("CumSum", {"x": (3, 4)}, {"axis": np.array(0)}, {"y": FLOAT},
                           exclusive=1)
    x = ad.Variable("x")
    y = donnx.import_model(proto).train()(x)
    (grad,) = ad.gradients(ad.sum_op(y * y), [x])
    (ours,) = ad.Executor([grad]).run({x: X}, convert_to_numpy_ret_vals=True)
    tx = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    (tx.cumsum(0) - tx).pow(2).sum().backward()
    np.testing.assert_allclose(ours, tx.grad.numpy(), rtol=1e-5, atol=1e-5)

    op_type, inputs, constants, outputs, attrs = CASES["scatter_elements_add"]
    proto = one_node_model(op_type, inputs, constants, outputs, **attrs)
    data, updates = ad.Variable("x"), ad.Variable("u")
    y = donnx.import_model(proto).train()(data, updates)
    grads = ad.gradients(ad.sum_op(y * y), [data, updates])
    u = normal((2, 4), 1)
    ours = ad.Executor(grads).run({data: X, updates: u}, convert_to_numpy_ret_vals=True)
    td = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    tu = torch.tensor(u, dtype=torch.float64, requires_grad=True)
    index = torch.tensor(constants["i"] % 3)
    td.scatter_add(0, index, tu).pow(2).sum().backward()
    for mine, reference in zip(ours, (td, tu)):
        np.testing.assert_allclose(mine, reference.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_scatter_refuses_indices_out_of_range():
    proto = one_node_model("ScatterElements", {"x": (3, 4), "u": (1, 2)},
                           {"i": np.array([[0, 4]])}, {"y": FLOAT}, axis=1)
    with pytest.raises(OnnxError, match="ScatterElements node.*indices must be in"):
        donnx.import_model(proto)(ad.Variable("x"), ad.Variable("u"))


def test_gather_nd_with_batch_axes_matches_onnxruntime():
    proto = one_node_model("GatherND", {"x": (2, 3, 4)},
                           {"i": np.array([[[2], [0]], [[1], [1]]])}, {"y": FLOAT},
                           batch_dims=1)
    assert_close(proto, {"x": normal((2, 3, 4), 0)})


@pytest.mark.parametrize("op_type", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows_match_onnxruntime(op_type, periodic):
    node = helper.make_node(op_type, ["n"], ["y"], periodic=periodic)
    graph = helper.make_graph([node], "test", [], [helper.make_tensor_value_info(
        "y", FLOAT, (7,))], [numpy_helper.from_array(np.array(7, np.int64), "n")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    assert_close(proto, {})


def test_swiglu_is_swish_of_the_gate_times_the_value():
    node = helper.make_node("SwiGLU", ["a", "b"], ["y"], alpha=0.5)
    graph = helper.make_graph([node], "test", [
        helper.make_tensor_value_info(n, FLOAT, (2, 3)) for n in "ab"],
        [helper.make_tensor_value_info("y", FLOAT, (2, 3))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 28)])
    a, b = normal((2, 3), 0), normal((2, 3), 1)
    (y,) = donnx.InferenceSession(proto.SerializeToString()).run(None, {"a": a, "b": b})
    np.testing.assert_allclose(y, a / (1 + np.exp(-0.5 * a)) * b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [3, 4])
def test_det_and_its_gradient_match_pytorch(size):
    torch = pytest.importorskip("torch")
    proto = one_node_model("Det", {"x": (2, size, size)}, {}, {"y": FLOAT})
    value = normal((2, size, size), size)
    assert_close(proto, {"x": value})
    x = ad.Variable("x")
    y = donnx.import_model(proto).train()(x)
    (grad,) = ad.gradients(ad.sum_op(y * y), [x])
    (ours,) = ad.Executor([grad]).run({x: value}, convert_to_numpy_ret_vals=True)
    tx = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    torch.linalg.det(tx).pow(2).sum().backward()
    np.testing.assert_allclose(ours, tx.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attrs,components,bins", [({"onesided": 1}, 1, 5), ({}, 2, 8),
                                                    ({"inverse": 1}, 2, 8)])
def test_dft_matches_onnxruntime(attrs, components, bins):
    """Real and complex signals of 6 along axis 1 (a DFT length of 8 pads them)."""
    node = helper.make_node("DFT", ["x", "n", "axis"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "test", [helper.make_tensor_value_info("x", FLOAT, (2, 6, 3, components))],
        [helper.make_tensor_value_info("y", FLOAT, (2, bins, 3, 2))],
        [numpy_helper.from_array(np.array(8, np.int64), "n"),
         numpy_helper.from_array(np.array(1, np.int64), "axis")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)],
                              ir_version=9)
    ours, theirs = run_both(proto, {"x": normal((2, 6, 3, components))})
    assert ours[0].shape == theirs[0].shape
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-4)
