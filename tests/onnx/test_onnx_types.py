"""The session's types, opsets and shapes: float64 models, narrow floats (float16, bfloat16)
computed in float32, models of older opsets, integer inputs (indices, or numbers folded in
per run), outputs in their declared types, graphs built again for the fed shapes, and the
refusals of what dlsys cannot run."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import dlsys.onnx as donnx
from dlsys.errors import DtypeError

FLOAT, DOUBLE, INT64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64
FLOAT16, BFLOAT16 = TensorProto.FLOAT16, TensorProto.BFLOAT16
IR_VERSION = {9: 4, 11: 6, 13: 7, 17: 8, 21: 10}


def typed_model(nodes, inputs: dict, outputs: dict, initializers: dict | None = None,
                opset: int = 17) -> onnx.ModelProto:
    """A model of ``nodes`` whose inputs and outputs are ``name -> (ONNX type, shape)``."""
    graph = helper.make_graph(
        nodes, "types", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_VERSION[opset])
    onnx.checker.check_model(proto)
    return proto


def onnxruntime_outputs(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def dense_relu(dtype, type_id: int, opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["y"])]
    return typed_model(nodes, {"x": (type_id, ["batch", 3])}, {"y": (type_id, ["batch", 4])},
                       {"w": rng.normal(size=(4, 3)).astype(dtype),
                        "b": rng.normal(size=4).astype(dtype)}, opset)


def test_float64_model_runs_in_float64():
    proto = dense_relu(np.float64, DOUBLE)
    x = np.random.default_rng(1).normal(size=(2, 3))
    session = donnx.InferenceSession(proto)
    assert session.model.dtype == "float64"
    (ours,), (theirs,) = session.run(None, {"x": x}), onnxruntime_outputs(proto, {"x": x})
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    with pytest.raises(DtypeError, match="'x' has dtype float32.*double"):
        session.run(None, {"x": x.astype(np.float32)})


def test_mixed_float32_and_float64_is_refused():
    proto = dense_relu(np.float32, DOUBLE)  # float64 input, float32 weights
    with pytest.raises(donnx.OnnxError, match=r"mixes float32 \(initializer 'w'\) and "
                                              r"float64 \(input 'x'\)"):
        donnx.InferenceSession(proto)


@pytest.mark.parametrize("opset", [9, 11])
def test_older_opsets_are_converted(opset):
    """A model of opset 9 or 11 (Softmax coerced to 2-D, Dropout's is_test gone) is
    converted to opset 13 at import and runs as onnxruntime runs the original."""
    proto = dense_relu(np.float32, FLOAT, opset)
    proto.graph.node.append(helper.make_node("Softmax", ["y"], ["p"], axis=1))
    proto.graph.output.append(helper.make_tensor_value_info("p", FLOAT, ["batch", 4]))
    x = np.random.default_rng(2).normal(size=(2, 3)).astype(np.float32)
    ours = donnx.InferenceSession(proto).run(None, {"x": x})
    for a, b in zip(ours, onnxruntime_outputs(proto, {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_failed_opset_conversion_names_the_opset_and_ops(monkeypatch):
    def refuse(model, version):
        raise RuntimeError("No Adapter For Relu\nmore detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(donnx.OnnxError, match="opset 11 .*cannot convert the model to opset "
                                              "13 \\(No Adapter For Relu\\); its operators: "
                                              "Gemm, Relu"):
        donnx.InferenceSession(dense_relu(np.float32, FLOAT, 11))


def test_integer_input_read_as_a_constant_is_folded_per_value():
    """A ReduceSum's axes fed as an int64 input: the graph is built for each value fed."""
    proto = typed_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                        {"x": (FLOAT, [2, 3]), "axes": (INT64, [1])}, {"y": (FLOAT, ["n"])})
    session = donnx.InferenceSession(proto)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for axis in (0, 1, 0):
        feeds = {"x": x, "axes": np.array([axis], dtype=np.int64)}
        (ours,) = session.run(None, feeds)
        np.testing.assert_allclose(ours, x.sum(axis=axis))


def test_integer_output_is_returned_in_its_declared_type():
    proto = typed_model([helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0)],
                        {"x": (FLOAT, [2, 5])}, {"i": (INT64, [2])})
    x = np.random.default_rng(3).normal(size=(2, 5)).astype(np.float32)
    (ours,) = donnx.InferenceSession(proto).run(None, {"x": x})
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, x.argmax(axis=1))


@pytest.mark.skipif("Gather" not in donnx.supported_ops(), reason="no Gather converter")
def test_int64_index_input():
    """Token ids fed as int64 index an initializer's rows (an embedding), as onnxruntime."""
    table = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    proto = typed_model([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
                        {"ids": (INT64, ["batch", 2])}, {"y": (FLOAT, ["batch", 2, 3])},
                        {"table": table})
    ids = np.array([[0, 4], [3, 3]], dtype=np.int64)
    (ours,) = donnx.InferenceSession(proto).run(None, {"ids": ids})
    np.testing.assert_array_equal(ours, table[ids])


def test_integer_input_read_as_numbers_is_refused():
    """In a float32 model (here for its float32 weight), which holds integers exactly only
    to 2**24; an integer graph without float values runs in float64
    (``test_onnx_integer_graphs``)."""
    proto = typed_model([helper.make_node("Relu", ["x"], ["y"]),
                         helper.make_node("Relu", ["w"], ["v"])], {"x": (INT64, [2])},
                        {"y": (INT64, [2]), "v": (FLOAT, [2])},
                        {"w": np.ones(2, dtype=np.float32)}, opset=13)
    with pytest.raises(donnx.OnnxError, match=r"input 'x' has type tensor\(int64\); dlsys "
                                              r"computes in float32 and reads integer inputs "
                                              r"only as indices"):
        donnx.InferenceSession(proto)


def test_float16_model_is_computed_in_float32():
    """float16 weights and feeds widen exactly to float32; the output is rounded to float16.
    onnxruntime computes in float16, so the two differ by float16 roundings at most."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    proto = typed_model(nodes, {"x": (FLOAT16, ["batch", 3])}, {"y": (FLOAT16, ["batch", 4])},
                        {"w": rng.normal(size=(3, 4)).astype(np.float16),
                         "b": rng.normal(size=4).astype(np.float16)})
    session = donnx.InferenceSession(proto)
    assert session.model.dtype == "float32"
    x = rng.normal(size=(5, 3)).astype(np.float16)
    (ours,), (theirs,) = session.run(None, {"x": x}), onnxruntime_outputs(proto, {"x": x})
    assert ours.dtype == np.float16 and np.count_nonzero(ours) > 4
    np.testing.assert_allclose(ours.astype(np.float32), theirs.astype(np.float32), rtol=2e-3,
                               atol=2e-3)
    with pytest.raises(DtypeError, match="'x' has dtype float32.*float16"):
        session.run(None, {"x": x.astype(np.float32)})


def test_bfloat16_output_is_rounded_to_nearest_even():
    import ml_dtypes

    proto = typed_model([helper.make_node("Cast", ["x"], ["y"], to=BFLOAT16)],
                        {"x": (FLOAT, [6])}, {"y": (BFLOAT16, [6])})
    # 1 + 2**-8 lies halfway between bfloat16's 1 and 1 + 2**-7: ties go to even (1).
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -3.14159, 1e-39, 3.4e38, np.inf],
                 dtype=np.float32)
    (ours,) = donnx.InferenceSession(proto).run(None, {"x": x})
    assert ours.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(ours.astype(np.float32), x.astype(ml_dtypes.bfloat16)
                                  .astype(np.float32))
    np.testing.assert_array_equal(ours.astype(np.float32)[:2], [1.0, 1 + 2 ** -6])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cast_to_float16_inside_the_graph_rounds(dtype):
    """x -> float16 -> back, times 3: what follows the cast reads the float16 value, in a
    float32 model as in a float64 one, as numpy's float16 rounds it."""
    type_id = FLOAT if dtype == "float32" else DOUBLE
    nodes = [helper.make_node("Cast", ["x"], ["half"], to=FLOAT16),
             helper.make_node("Cast", ["half"], ["back"], to=type_id),
             helper.make_node("Mul", ["back", "three"], ["y"])]
    proto = typed_model(nodes, {"x": (type_id, [7])}, {"y": (type_id, [7])},
                        {"three": np.array([3.0], dtype=dtype)})
    x = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 0.1, -65519.0, 70000.0, 1e-8, 2 ** -20],
                 dtype=dtype)
    (ours,) = donnx.InferenceSession(proto).run(None, {"x": x})
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(dtype) * 3
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours, onnxruntime_outputs(proto, {"x": x})[0])


def test_castlike_input_read_only_for_its_type_does_not_make_the_model_float64():
    """CastLike's second input gives a type, not values: a float64 one there leaves a
    float32 model float32, and the output comes back in float64."""
    proto = typed_model([helper.make_node("Sqrt", ["x"], ["root"]),
                         helper.make_node("CastLike", ["root", "like"], ["y"])],
                        {"x": (FLOAT, [3]), "like": (DOUBLE, [1])}, {"y": (DOUBLE, [3])})
    session = donnx.InferenceSession(proto)
    assert session.model.dtype == "float32"
    feeds = {"x": np.array([2.0, 9.0, 0.5], dtype=np.float32), "like": np.zeros(1)}
    (ours,), (theirs,) = session.run(None, feeds), onnxruntime_outputs(proto, feeds)
    assert ours.dtype == np.float64
    np.testing.assert_array_equal(ours, theirs)


def test_cast_to_float8_inside_the_graph_saturates_unless_told_not_to():
    """ONNX's Cast to float8 clamps to the largest finite value (448 for e4m3fn) unless
    ``saturate=0``, where an overflow is NaN; what follows reads the rounded value."""
    import ml_dtypes
    from onnx.numpy_helper import saturate_cast

    e4m3 = TensorProto.FLOAT8E4M3FN
    nodes = [helper.make_node("Cast", ["x"], ["clamped"], to=e4m3),
             helper.make_node("Cast", ["x"], ["wrapped"], to=e4m3, saturate=0),
             helper.make_node("Cast", ["clamped"], ["a"], to=FLOAT),
             helper.make_node("Cast", ["wrapped"], ["b"], to=FLOAT),
             helper.make_node("Add", ["a", "b"], ["y"])]
    proto = typed_model(nodes, {"x": (FLOAT, [6])}, {"y": (FLOAT, [6])}, opset=21)
    x = np.array([0.3, -1.0625, 460.0, 1e6, -np.inf, 2 ** -9 * 1.5], dtype=np.float32)
    (ours,) = donnx.InferenceSession(proto).run(None, {"x": x})
    with np.errstate(over="ignore", invalid="ignore"):
        expected = (saturate_cast(x, ml_dtypes.float8_e4m3fn).astype(np.float32)
                    + x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    np.testing.assert_array_equal(ours, expected)
    assert np.isnan(ours[3]) and ours[2] == 896  # 460 rounds to 448 either way


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_float_rounding_matches_ml_dtypes(dtype):
    """Every float8 and float4 rounding kernel, saturating or not, on values across their
    ranges (ties, subnormals, overflows, infinities, NaN), as ml_dtypes rounds them."""
    from dlsys.ops.cast import SMALL_FLOAT_TYPES, _round_to_format, round_small_float_op
    from dlsys.ops.placeholder import Variable
    from dlsys.runtime.executor import Executor

    rng = np.random.default_rng(6)
    values = rng.standard_normal(200) * np.exp2(rng.uniform(-20, 18, 200))
    values = np.concatenate([values, [np.inf, -np.inf, np.nan, -0.0, 460.0, 464.0, 470.0,
                                      61440.0, 6.5, 2 ** -9 * 1.5, 2 ** -17 * 3]]).astype(dtype)
    x = Variable("x")
    cases = [(name, saturate) for name in SMALL_FLOAT_TYPES for saturate in (False, True)]
    nodes = [round_small_float_op(x, name, saturate) for name, saturate in cases]
    results = Executor(nodes, dtype=dtype).run({x: values}, convert_to_numpy_ret_vals=True)
    for (name, saturate), ours in zip(cases, results):
        expected = _round_to_format(values, name, saturate)
        np.testing.assert_array_equal(ours, expected, err_msg=f"{name} saturate={saturate}")
        signed = ~np.isnan(expected)
        np.testing.assert_array_equal(np.signbit(ours[signed]), np.signbit(expected[signed]))


def test_narrow_rounding_passes_the_gradient_straight_through():
    """A model with a Cast to float16 fine-tunes: the rounding's gradient is the identity,
    as PyTorch's autocast treats it."""
    from dlsys.ops.cast import round_bfloat16_op, round_float16_op
    from dlsys.ops.placeholder import Variable
    from dlsys.passes.gradient import gradients
    from dlsys.runtime.executor import Executor

    x = Variable("x")
    y = round_float16_op(x) * round_bfloat16_op(x)
    (grad,) = gradients(y, [x])
    values = np.array([0.1, 1.7, -2.3], dtype=np.float32)
    (ours,) = Executor([grad], dtype="float32").run({x: values}, convert_to_numpy_ret_vals=True)
    import ml_dtypes

    expected = (values.astype(np.float16).astype(np.float32)
                + values.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_graph_is_built_for_the_fed_shapes():
    """A product of (batch, seq, 4) rows where both leading sizes are symbolic: the
    converter needs one of them, so the graph is built for each set of shapes fed."""
    w = np.random.default_rng(5).normal(size=(4, 2)).astype(np.float32)
    proto = typed_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                        {"x": (FLOAT, ["batch", "seq", 4])}, {"y": (FLOAT, ["batch", "seq", 2])},
                        {"w": w})
    session = donnx.InferenceSession(proto)
    for shape in [(2, 3, 4), (1, 5, 4), (2, 3, 4)]:
        x = np.random.default_rng(6).normal(size=shape).astype(np.float32)
        (ours,) = session.run(None, {"x": x})
        np.testing.assert_allclose(ours, x @ w, rtol=1e-5, atol=1e-5)


def test_shape_of_a_symbolic_batch_is_read_at_the_fed_shape():
    """Shape -> Gather -> Concat -> Reshape on a symbolic batch (PyTorch's flatten by
    ``x.view(x.size(0), -1)``): the graph is built per fed shape, the chain folded."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Concat", ["b", "six"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    proto = typed_model(nodes, {"x": (FLOAT, ["batch", 2, 3])}, {"y": (FLOAT, ["batch", 6])},
                        {"zero": np.array([0], np.int64), "six": np.array([6], np.int64)})
    session = donnx.InferenceSession(proto)
    for batch in (2, 3):
        x = np.arange(batch * 6, dtype=np.float32).reshape(batch, 2, 3)
        (ours,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(ours, x.reshape(batch, 6))


def test_scalar_output_is_returned_0d():
    """A sum over every axis is one number: held as (1,) by dlsys, returned 0-d as the file
    declares (and as onnxruntime returns it)."""
    proto = typed_model([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
                        {"x": (FLOAT, [2, 3])}, {"y": (FLOAT, [])})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (ours,) = donnx.InferenceSession(proto).run(None, {"x": x})
    (theirs,) = onnxruntime_outputs(proto, {"x": x})
    assert ours.shape == theirs.shape == ()
    np.testing.assert_allclose(ours, theirs)


def test_a_bool_input_is_a_mask_read_as_zero_and_one():
    """Where's condition and the logic ops fed bools, against onnxruntime."""
    nodes = [helper.make_node("Not", ["keep"], ["drop"]),
             helper.make_node("Where", ["drop", "x", "y"], ["z"])]
    graph = helper.make_graph(
        nodes, "masked",
        [helper.make_tensor_value_info("keep", TensorProto.BOOL, [2, 3]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8).SerializeToString()
    rng = np.random.default_rng(0)
    feeds = {"keep": rng.random((2, 3)) > 0.5,
             "x": rng.normal(size=(2, 3)).astype(np.float32),
             "y": rng.normal(size=(2, 3)).astype(np.float32)}
    ours = donnx.InferenceSession(data).run(None, feeds)[0]
    theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(ours, theirs)


def test_a_running_statistic_sharing_an_initializer_with_a_weight_gets_its_own():
    """An exporter writes equal tensors once: a fresh batch norm's scale and running variance
    (ones), its shift and running mean (zeros). Training updates the statistics in place;
    the scale and shift must stay what they were."""
    from dlsys import autodiff as ad

    node = helper.make_node("BatchNormalization", ["x", "ones", "zeros", "zeros", "ones"],
                            ["y"], name="bn")
    graph = helper.make_graph(
        [node], "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [numpy_helper.from_array(np.ones(2, np.float32), "ones"),
         numpy_helper.from_array(np.zeros(2, np.float32), "zeros")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    module = donnx.import_model(proto)
    module.train()
    x = ad.Variable("x")
    images = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 2, 3, 3)).astype(np.float32)
    ad.Executor([module(x)]).run({x: images})
    state = module.state_dict()
    np.testing.assert_array_equal(state["ones"], np.ones(2, np.float32))
    np.testing.assert_array_equal(state["zeros"], np.zeros(2, np.float32))
    statistics = [v for k, v in state.items() if k not in ("ones", "zeros")]
    assert len(statistics) == 2 and all(np.all(v != 0) and np.all(v != 1) for v in statistics)
    assert len(proto.graph.initializer) == 2  # the caller's model is left as it was
