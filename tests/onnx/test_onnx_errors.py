"""Bad input to dlsys.onnx: each a named DlsysError, never a traceback from onnx or TVM."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx_testing import model, normal  # noqa: E402

import dlsys  # noqa: E402
import dlsys.onnx as donnx  # noqa: E402
from dlsys import nn  # noqa: E402
from dlsys.errors import (  # noqa: E402
    ArgumentError,
    ArgumentTypeError,
    DataError,
    DlsysError,
    DtypeError,
    FeedError,
    ShapeError,
)


def _conv_model(opset=17, **attrs):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)
    return model([node], {"x": ("N", 2, 8, 8)}, {"y": None}, {"w": normal((3, 2, 3, 3))},
                 opset)


def _pool_model(op_type, **attrs):
    node = helper.make_node(op_type, ["x"], ["y"], name="pool1", **attrs)
    return model([node], {"x": ("N", 2, 8, 8)}, {"y": None})


def _mlp_bytes() -> bytes:
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    return model([node], {"x": ("batch", 4)}, {"y": ("batch", 3)},
                 {"w": normal((3, 4)), "b": normal((3,))}).SerializeToString()


def test_unsupported_operator_names_op_node_and_supported_list():
    node = helper.make_node("Bernoulli", ["x"], ["y"], name="coin_7")
    with pytest.raises(donnx.OnnxError) as err:
        donnx.import_model(model([node], {"x": (2, 3)}, {"y": (2, 3)}))
    message = str(err.value)
    assert "'Bernoulli'" in message and "coin_7" in message and "Gemm" in message
    assert all(op in message for op in donnx.supported_ops())


def test_operator_of_another_domain_is_refused():
    node = helper.make_node("Relu", ["x"], ["y"], name="custom", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [2])],
                              [helper.make_tensor_value_info("y", 1, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)],
                              ir_version=8)
    with pytest.raises(donnx.OnnxError, match="com.example"):
        donnx.import_model(proto)


@pytest.mark.parametrize("build,named", [
    # Grouped, dilated, SAME-padded, asymmetric and ceil-mode windows are imported
    # (tests/onnx/test_onnx_conv.py); a group that does not fit the channels is not.
    (lambda: _conv_model(group=2, kernel_shape=[3, 3]), "group=2"),
    (lambda: _pool_model("MaxPool", kernel_shape=[2, 2], auto_pad="SAME"), "auto_pad='SAME'"),
])
def test_unsupported_attribute_values_are_named(build, named):
    proto = build()
    with pytest.raises(donnx.OnnxError) as err:
        donnx.import_model(proto)
    assert named in str(err.value)
    assert proto.graph.node[0].name in str(err.value)


def test_a_shape_unknown_until_run_time_is_refused_at_import_and_folded_per_run():
    """A constant of ``Shape(x)``'s sizes folds once the sizes are known: a session builds
    its graph for the fed shapes; the module, whose batch is free, names the node (a
    Reshape to ``Shape(x)`` imports: its one free size is a -1, see test_onnx_tensor)."""
    ones = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape_of_x"),
             helper.make_node("ConstantOfShape", ["s"], ["ones"], name="c", value=ones),
             helper.make_node("Mul", ["x", "ones"], ["y"], name="m")]
    proto = model(nodes, {"x": ("N", 3)}, {"y": ("N", 3)})
    with pytest.raises(donnx.OnnxError, match=r"node 'c'.*'s'.*unknown until run time"):
        donnx.import_model(proto)
    x = normal((4, 3))
    np.testing.assert_array_equal(
        donnx.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0], x)


def test_opset_newer_than_onnx_knows_is_refused():
    # An older one is converted to opset 13 (tests/onnx/test_onnx_types.py).
    from dlsys.onnx.reader import newest_opset

    proto = model([helper.make_node("Relu", ["x"], ["y"])], {"x": (2,)}, {"y": (2,)})
    proto.opset_import[0].version = newest_opset() + 1
    with pytest.raises(donnx.OnnxError, match=f"opset {newest_opset() + 1}.*13 to"):
        donnx.import_model(proto)


def test_integer_input_is_refused():
    """In a float32 model; a model without float values computes its integers in float64
    (tests/onnx/test_onnx_integer_graphs.py)."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"]),
                               helper.make_node("Relu", ["f"], ["g"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [2]),
                               helper.make_tensor_value_info("f", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [2]),
                               helper.make_tensor_value_info("g", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(donnx.OnnxError, match=r"input 'x' has type tensor\(int64\)"):
        donnx.import_model(proto)


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage\xff" * 10, "truncated"])
def test_corrupt_or_truncated_file(tmp_path, data):
    path = tmp_path / "model.onnx"
    if data == "truncated":
        data = _mlp_bytes()[: len(_mlp_bytes()) // 2]
    path.write_bytes(data)
    with pytest.raises(DataError, match="model.onnx"):
        donnx.InferenceSession(str(path))
    with pytest.raises(DataError):
        donnx.import_model(data)


def test_missing_file_and_folder(tmp_path):
    for path in (tmp_path / "absent.onnx", tmp_path):
        with pytest.raises(DataError, match="no such ONNX file"):
            donnx.import_model(path)
    with pytest.raises(ArgumentTypeError):
        donnx.import_model(42)


def test_external_data_is_refused(tmp_path):
    proto = onnx.load_from_string(_mlp_bytes())
    onnx.external_data_helper.convert_model_to_external_data(proto, size_threshold=0,
                                                             location="weights.bin")
    with pytest.raises(DataError, match="external file"):
        donnx.import_model(proto)


@pytest.fixture(scope="module")
def session():
    return donnx.InferenceSession(_mlp_bytes())


@pytest.mark.parametrize("feed,error,named", [
    ({"x": normal((2, 4)).astype(np.float64)}, DtypeError, "float64"),
    ({"x": normal((2, 5))}, ShapeError, r"\(2, 5\).*\('\?', 4\)"),
    ({"x": normal((2, 4, 1))}, ShapeError, "shape"),
    ({}, FeedError, r"missing \['x'\]"),
    ({"x": normal((2, 4)), "z": normal((2, 4))}, FeedError, r"unknown \['z'\]"),
    ({"x": [[1.0] * 4]}, FeedError, "numpy array"),
])
def test_bad_feeds(session, feed, error, named):
    with pytest.raises(error, match=named):
        session.run(None, feed)


def test_bad_output_names(session):
    with pytest.raises(ArgumentError, match=r"unknown output\(s\) \['nope'\]"):
        session.run(["nope"], {"x": normal((2, 4))})
    with pytest.raises(ArgumentTypeError):
        session.run("y", {"x": normal((2, 4))})
    assert session.run(["y"], {"x": normal((2, 4))})[0].shape == (2, 3)


def test_export_bad_arguments(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x

    dlsys.manual_seed(0)
    with pytest.raises(ArgumentTypeError, match="layer 1 is a Custom"):
        donnx.export(nn.Sequential(nn.Linear(3, 2), Custom()), (1, 3), tmp_path / "m.onnx")
    with pytest.raises(ArgumentTypeError, match="must be a dlsys.nn.Module"):
        donnx.export("model", (1, 3), tmp_path / "m.onnx")
    for shape in [(3,), (1, 0), "13", (1, 2.5)]:
        with pytest.raises(DlsysError, match="input_shape"):
            donnx.export(nn.Linear(3, 2), shape, tmp_path / "m.onnx")
    with pytest.raises(ShapeError):  # a shape the model cannot take
        donnx.export(nn.Linear(3, 2), (1, 4), tmp_path / "m.onnx")
    with pytest.raises(DataError, match="cannot write"):
        donnx.export(nn.Linear(3, 2), (1, 3), tmp_path / "absent" / "m.onnx")
    assert not list(tmp_path.iterdir())


# Values out of range for an input of rank r, per kind of rank-dependent attribute
# (``dlsys.onnx.bounds``): each kind an op declares must have its values here.
OUT_OF_RANGE = {
    "axis": lambda r: [r, -r - 1],
    "split": lambda r: [r + 1, -r - 1],
    "permutation": lambda r: [list(range(r + 1)), [0] * r],
    "spatial": lambda r: [[1] * (r - 1)],
    "spatial_pairs": lambda r: [[0] * (2 * (r - 1))],
}


def _valid_model(op_type: str):
    """A valid model of ``op_type`` and feeds for every input: the first case of
    ``test_onnx_ops``' table whose one node is this op, else one of ONNX's own node cases
    that dlsys passes (so an op registered by any family has one)."""
    from onnx_testing import model as build_model
    from onnx_testing import single_node_backend_case
    from test_onnx_ops import CASES

    for case in (CASES[n]() for n in sorted(CASES)):
        node, inputs, outputs, inits = case
        if not isinstance(node, list) and node.op_type == op_type:
            proto = build_model([node], inputs, outputs, inits, opset=20)  # every attribute
            x = proto.graph.input[0]
            shape = [d.dim_value or 2 for d in x.type.tensor_type.shape.dim]
            return proto, {x.name: normal(shape)}
    backend_case = single_node_backend_case(op_type)
    if backend_case is None:
        return None
    proto, (inputs, _) = backend_case.model, backend_case.data_sets[0]
    return proto, {v.name: a for v, a in zip(proto.graph.input, inputs)}


def _ranked_cases():
    """(op type, attribute, bad value, valid model, feeds) for every rank-dependent
    attribute of every supported op, from the op table and one valid model per op."""
    from dlsys.onnx.ops import CONVERTERS

    cases = []
    for op_type, entry in sorted(CONVERTERS.items()):
        if not entry.ranked:
            continue
        valid = _valid_model(op_type)
        if valid is None:  # test_every_ranked_op_has_a_valid_model names it
            continue
        proto, feeds = valid
        rank = len(proto.graph.input[0].type.tensor_type.shape.dim)
        for attr, rule in sorted(entry.ranked.items()):
            for bad in OUT_OF_RANGE[rule.name](rank):
                cases.append(pytest.param(op_type, attr, bad, proto, feeds,
                                          id=f"{op_type}-{attr}={bad}"))
    return cases


def test_every_ranked_op_has_a_valid_model():
    from dlsys.onnx.ops import CONVERTERS

    missing = [op for op, entry in sorted(CONVERTERS.items())
               if entry.ranked and _valid_model(op) is None]
    assert not missing, f"no valid one-node model to break the attributes of: {missing}"


@pytest.mark.parametrize("op_type,attr,bad,valid,feeds", _ranked_cases())
def test_rank_dependent_attributes_out_of_range_are_refused(op_type, attr, bad, valid, feeds):
    """An axis, permutation or window that does not fit the input's rank is refused at
    import, naming the node and the attribute; onnxruntime refuses the same model (so the
    value is really out of range). A Softmax once ran on ``axis % rank``."""
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(valid)
    node = proto.graph.node[-1]
    node.name = "ranked_node"
    kept = [a for a in node.attribute if a.name != attr]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(attr, bad)])
    with pytest.raises(donnx.OnnxError) as err:
        donnx.import_model(proto)
    assert "ranked_node" in str(err.value) and f"{attr}={bad}" in str(err.value)
    data = proto.SerializeToString()
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error types
        ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_every_kind_of_rank_rule_has_out_of_range_values():
    from dlsys.onnx.ops import CONVERTERS

    kinds = {rule.name for entry in CONVERTERS.values() for rule in entry.ranked.values()}
    assert kinds and kinds <= set(OUT_OF_RANGE)


def test_reshape_copying_a_dimension_the_input_lacks_is_refused():
    """A 0 in Reshape's shape copies the input's size at its index: at index 2 of a 2-d
    input there is none (once a bare IndexError)."""
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape_0")
    proto = model([node], {"x": (2, 4)}, {"y": (2, 4, 1)}, {"s": np.array([2, 4, 0])})
    with pytest.raises(donnx.OnnxError, match=r"reshape_0.*\[2, 4, 0\].*rank 2"):
        donnx.import_model(proto)


@pytest.mark.parametrize("declared", [None, ("N", 3)])
def test_a_value_far_larger_than_the_inputs_imply_is_refused(declared):
    """pads=[20000]*4 on a 4x4 image asks for a 40004x40004 output (6.4 GB) from a file of a
    few hundred bytes: refused at import, naming the node and the bytes, whatever output
    shape the file declares."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="huge", pads=[20000] * 4)
    proto = model([node], {"x": ("N", 1, 4, 4)}, {"y": declared}, {"w": normal((1, 1, 1, 1))})
    with pytest.raises(donnx.OnnxError, match=r"huge.*\(1, 1, 40004, 40004\).*6401280064 "
                                              r"bytes"):
        donnx.InferenceSession(proto.SerializeToString())
    # The same padding within the bound imports and runs.
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="padded", pads=[200] * 4)
    proto = model([node], {"x": ("N", 1, 4, 4)}, {"y": None}, {"w": normal((1, 1, 1, 1))})
    out = donnx.InferenceSession(proto.SerializeToString()).run(None, {"x": normal((2, 1, 4, 4))})
    assert out[0].shape == (2, 1, 404, 404)
