"""Integer graphs: a model whose run-time tensors are integers runs in float64 with ONNX's
integer semantics (Div truncates, Mod's sign, BitShift), exactly as onnxruntime runs it, and
what float64 would not hold exactly (a feed past 2**53, an output past its type) is refused
naming the input or output."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from test_onnx_types import typed_model

import dlsys.onnx as donnx
from dlsys.errors import FeedError

INT32, INT64, UINT8, FLOAT = (TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
                              TensorProto.FLOAT)


def onnxruntime_outputs(proto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def arithmetic_model(type_id: int):
    """Every integer operator of ONNX's arithmetic on two run-time tensors, one output each."""
    ops = {"sum": ("Add", {}), "difference": ("Sub", {}), "product": ("Mul", {}),
           "quotient": ("Div", {}), "remainder": ("Mod", {}),
           "fmod": ("Mod", {"fmod": 1}), "larger": ("Max", {}), "less": ("Less", {})}
    nodes = [helper.make_node(op, ["a", "b"], [name], **attrs)
             for name, (op, attrs) in ops.items()]
    nodes += [helper.make_node("Neg", ["a"], ["negated"]),
              helper.make_node("Abs", ["b"], ["magnitude"]),
              helper.make_node("Cast", ["quotient"], ["as_float"], to=FLOAT)]
    outputs = {name: (TensorProto.BOOL if name == "less" else type_id, [2, 5])
               for name in [*ops, "negated", "magnitude"]}
    outputs["as_float"] = (FLOAT, [2, 5])
    return typed_model(nodes, {"a": (type_id, [2, 5]), "b": (type_id, [2, 5])}, outputs)


@pytest.mark.parametrize("dtype, type_id", [(np.int32, INT32), (np.int64, INT64)])
def test_integer_arithmetic_matches_onnxruntime(dtype, type_id):
    """Division and remainders of negative numbers (-7 / 2 is -3; -7 mod 2 is 1 with the
    divisor's sign, -1 with the dividend's), and values past 2**31 for int64."""
    proto = arithmetic_model(type_id)
    session = donnx.InferenceSession(proto)
    assert session.model.dtype == "float64"
    big = 2 ** 28 + 1 if dtype == np.int32 else 2 ** 40 + 3
    a = np.array([[-7, 7, -7, 7, 0], [big, -big, 13, -13, 1]], dtype=dtype)
    b = np.array([[2, -2, -2, 2, 5], [3, 7, -4, 4, -1]], dtype=dtype)
    ours = session.run(None, {"a": a, "b": b})
    theirs = onnxruntime_outputs(proto, {"a": a, "b": b})
    for name, x, y in zip(session.get_outputs(), ours, theirs):
        assert x.dtype == y.dtype, name.name
        np.testing.assert_array_equal(x, y, err_msg=name.name)
    assert ours[3][0, 0] == -3 and ours[4][0, 0] == 1 and ours[5][0, 0] == -1


def test_bit_shifts_match_onnxruntime():
    nodes = [helper.make_node("BitShift", ["x", "s"], ["left"], direction="LEFT"),
             helper.make_node("BitShift", ["x", "s"], ["right"], direction="RIGHT")]
    proto = typed_model(nodes, {"x": (UINT8, [4]), "s": (UINT8, [4])},
                        {"left": (UINT8, [4]), "right": (UINT8, [4])})
    feeds = {"x": np.array([16, 4, 1, 255], dtype=np.uint8),
             "s": np.array([1, 2, 7, 0], dtype=np.uint8)}
    for x, y in zip(donnx.InferenceSession(proto).run(None, feeds),
                    onnxruntime_outputs(proto, feeds)):
        np.testing.assert_array_equal(x, y)


def test_cast_of_floats_to_integers_truncates():
    proto = typed_model([helper.make_node("Cast", ["x"], ["y"], to=INT32)],
                        {"x": (FLOAT, [6])}, {"y": (INT32, [6])})
    x = np.array([-2.7, -0.5, 0.5, 2.5, 3.99, -1e6], dtype=np.float32)
    (ours,), (theirs,) = (donnx.InferenceSession(proto).run(None, {"x": x}),
                          onnxruntime_outputs(proto, {"x": x}))
    np.testing.assert_array_equal(ours, theirs)


def test_int64_feed_past_2_53_is_refused_naming_the_input():
    proto = typed_model([helper.make_node("Add", ["count", "step"], ["y"])],
                        {"count": (INT64, [2]), "step": (INT64, [2])}, {"y": (INT64, [2])})
    session = donnx.InferenceSession(proto)
    feeds = {"count": np.array([1, 2 ** 53 + 1], dtype=np.int64),
             "step": np.array([1, 1], dtype=np.int64)}
    with pytest.raises(FeedError, match=r"input 'count' holds 9007199254740993, past 2\*\*53"):
        session.run(None, feeds)
    feeds["count"] = np.array([1, -(2 ** 53)], dtype=np.int64)  # the last exact one runs
    np.testing.assert_array_equal(session.run(None, feeds)[0], [2, 1 - 2 ** 53])


def test_int32_overflow_is_refused_naming_the_output():
    """onnxruntime wraps 65536 * 65536 to 0 in int32; dlsys refuses rather than wrap."""
    proto = typed_model([helper.make_node("Mul", ["a", "b"], ["area"])],
                        {"a": (INT32, [2]), "b": (INT32, [2])}, {"area": (INT32, [2])})
    session = donnx.InferenceSession(proto)
    small = np.array([3, -4], dtype=np.int32)
    np.testing.assert_array_equal(session.run(None, {"a": small, "b": small})[0], [9, 16])
    large = np.array([3, 65536], dtype=np.int32)
    with pytest.raises(donnx.OnnxError, match=r"output 'area' \(int32\) computes 4294967296"):
        session.run(None, {"a": large, "b": large})


def test_integer_arithmetic_beside_float32_values_is_refused():
    """A float32 model computes integers exactly only to 2**24: it still refuses integer
    inputs read as numbers, naming the input."""
    nodes = [helper.make_node("Add", ["i", "i"], ["twice"]),
             helper.make_node("Relu", ["x"], ["y"])]
    proto = typed_model(nodes, {"i": (INT64, [2]), "x": (FLOAT, [2])},
                        {"twice": (INT64, [2]), "y": (FLOAT, [2])})
    with pytest.raises(donnx.OnnxError, match=r"input 'i' has type tensor\(int64\); dlsys "
                                              r"computes in float32"):
        donnx.InferenceSession(proto)


def test_float_remainder_of_run_time_tensors_is_refused():
    proto = typed_model([helper.make_node("Mod", ["a", "b"], ["r"], fmod=1)],
                        {"a": (FLOAT, [2]), "b": (FLOAT, [2])}, {"r": (FLOAT, [2])})
    with pytest.raises(donnx.OnnxError, match="Mod node 'r': Mod of floating-point tensors"):
        donnx.InferenceSession(proto)


def test_four_bit_integers_are_widened_exactly():
    """int4 feeds (ml_dtypes' type) widen to int8, and a Cast to float reads them exactly."""
    import ml_dtypes

    int4 = ml_dtypes.int4
    proto = typed_model([helper.make_node("Cast", ["x"], ["y"], to=FLOAT)],
                        {"x": (TensorProto.INT4, [4])}, {"y": (FLOAT, [4])})
    x = np.array([-8, -1, 0, 7], dtype=int4)
    (ours,) = donnx.InferenceSession(proto).run(None, {"x": x})
    np.testing.assert_array_equal(ours, np.array([-8, -1, 0, 7], dtype=np.float32))
