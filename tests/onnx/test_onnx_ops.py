"""Every supported ONNX operator, one small model each built with onnx.helper, run by dlsys
and compared with onnxruntime within 1e-4, at the first and last opset dlsys imports."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from onnx_testing import assert_matches_onnxruntime, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402

OPSETS = [13, 20]


def one_node(op_type, x_shape, out_shape, initializers=None, inputs=None, **attrs):
    """A model of one ``op_type`` node reading ``x`` then ``inputs`` (initializer names)."""
    node = helper.make_node(op_type, ["x", *(inputs or [])], ["y"], **attrs)
    return node, {"x": x_shape}, {"y": out_shape}, initializers or {}


def gemm(alpha=1.0, beta=1.0, transA=0, transB=0, c_shape=(5,)):
    a_shape = (3, 4) if transA else (4, 3)
    b = normal((5, 3) if transB else (3, 5), 1)
    inits = {"b": b}
    if c_shape is not None:
        inits["c"] = normal(c_shape, 2)
    return one_node("Gemm", a_shape, None, inits, ["b", "c"] if c_shape else ["b"],
                    alpha=alpha, beta=beta, transA=transA, transB=transB)


def conv(**attrs):
    return one_node("Conv", ("N", 3, 9, 8), None, {"w": normal((4, 3, 3, 3), 1),
                                                   "b": normal((4,), 2)}, ["w", "b"], **attrs)


def batch_norm(shape):
    c = shape[1]
    rng = np.random.default_rng(3)
    inits = {"s": normal((c,), 1), "bias": normal((c,), 2), "mean": normal((c,), 3),
             "var": rng.uniform(0.5, 2, c).astype(np.float32)}
    return one_node("BatchNormalization", shape, None, inits, ["s", "bias", "mean", "var"],
                    epsilon=1e-3)


def binary(op_type, x_shape, other):
    """``x op other``: an initializer of the other's shape (broadcast), or a number."""
    if isinstance(other, float):
        constant = helper.make_node("Constant", [], ["k"], value_float=other)
        node = helper.make_node(op_type, ["k", "x"], ["y"])
        return [constant, node], {"x": x_shape}, {"y": None}, {}
    return one_node(op_type, x_shape, None, {"b": np.abs(normal(other, 1)) + 0.5}, ["b"])


def logic():
    """Not, And and Xor of comparisons of ``x``, cast back to float (ONNX's logic ops take
    booleans, which no graph input of these tables is)."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("Less", ["x", "one"], ["below_one"]),
             helper.make_node("And", ["positive", "below_one"], ["between"]),
             helper.make_node("Xor", ["between", "positive"], ["at_least_one"]),
             helper.make_node("Not", ["at_least_one"], ["not_above"]),
             helper.make_node("Cast", ["not_above"], ["y"], to=TensorProto.FLOAT)]
    return nodes, {"x": ("N", 6)}, {"y": None}, {"zero": np.zeros(1, np.float32),
                                                 "one": np.ones(1, np.float32)}


CASES = {
    "gemm": lambda: gemm(),
    "gemm_alpha_beta": lambda: gemm(alpha=0.5, beta=2.0),
    "gemm_transA_transB": lambda: gemm(transA=1, transB=1),
    "gemm_transB_row_bias": lambda: gemm(transB=1, c_shape=(1, 5)),
    "gemm_matrix_bias": lambda: gemm(c_shape=(4, 5)),
    "gemm_no_bias": lambda: gemm(c_shape=None),
    "matmul": lambda: one_node("MatMul", ("N", 6), None, {"w": normal((6, 3), 1)}, ["w"]),
    "matmul_stacked_rows": lambda: one_node("MatMul", ("N", 2, 6), None,
                                            {"w": normal((6, 3), 1)}, ["w"]),
    "add_broadcast": lambda: binary("Add", ("N", 3, 4), (4,)),
    "sub_broadcast": lambda: binary("Sub", ("N", 3, 4), (3, 1)),
    "mul_broadcast": lambda: binary("Mul", ("N", 3, 4), (1, 3, 4)),
    "div_broadcast": lambda: binary("Div", ("N", 3, 4), (3, 4)),
    "add_scalar": lambda: binary("Add", ("N", 3), 1.5),
    "sub_scalar": lambda: binary("Sub", ("N", 3), 1.5),
    "mul_scalar": lambda: binary("Mul", ("N", 3), -2.0),
    "div_scalar": lambda: binary("Div", ("N", 3), 3.0),
    "relu": lambda: one_node("Relu", ("N", 5), ("N", 5)),
    "sigmoid": lambda: one_node("Sigmoid", ("N", 5), ("N", 5)),
    "tanh": lambda: one_node("Tanh", ("N", 5), ("N", 5)),
    "conv": lambda: conv(),
    "conv_pads_strides": lambda: conv(pads=[1, 2, 1, 2], strides=[2, 1], kernel_shape=[3, 3]),
    # One output channel: a (1,) bias, an initializer like any other (it was once taken
    # for a scalar constant and refused).
    "conv_one_channel": lambda: one_node("Conv", ("N", 2, 5, 5), None,
                                         {"w": normal((1, 2, 3, 3), 1), "b": normal((1,), 2)},
                                         ["w", "b"]),
    "conv_no_bias": lambda: one_node("Conv", ("N", 2, 6, 6), None, {"w": normal((3, 2, 2, 2))},
                                     ["w"]),
    "maxpool": lambda: one_node("MaxPool", ("N", 2, 8, 8), None, kernel_shape=[2, 2],
                                strides=[2, 2]),
    "maxpool_pads": lambda: one_node("MaxPool", ("N", 2, 7, 7), None, kernel_shape=[3, 3],
                                     pads=[1, 1, 1, 1]),
    "avgpool": lambda: one_node("AveragePool", ("N", 2, 8, 8), None, kernel_shape=[2, 2],
                                strides=[2, 2]),
    "avgpool_pads_counted": lambda: one_node("AveragePool", ("N", 2, 7, 7), None,
                                             kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1], count_include_pad=1),
    "global_avgpool": lambda: one_node("GlobalAveragePool", ("N", 3, 5, 4), None),
    "global_maxpool": lambda: one_node("GlobalMaxPool", ("N", 3, 5, 4), None),
    "lppool": lambda: one_node("LpPool", ("N", 2, 6, 6), None, kernel_shape=[2, 2]),
    "conv_transpose": lambda: one_node("ConvTranspose", ("N", 3, 4, 5), None,
                                       {"w": normal((3, 2, 3, 3), 1)}, ["w"], strides=[2, 2]),
    "batchnorm_images": lambda: batch_norm(("N", 3, 4, 5)),
    "batchnorm_rows": lambda: batch_norm(("N", 6)),
    "batchnorm_one_channel": lambda: batch_norm(("N", 1, 3, 3)),
    "flatten": lambda: one_node("Flatten", ("N", 2, 3, 4), None),
    "flatten_axis0": lambda: one_node("Flatten", ("N", 2, 3), None, axis=0),
    "flatten_axis2": lambda: one_node("Flatten", ("N", 2, 3, 4), None, axis=2),
    "reshape": lambda: one_node("Reshape", (2, 3, 4), None, {"s": np.array([4, 6])}, ["s"]),
    "reshape_minus_one": lambda: one_node("Reshape", ("N", 3, 4), None,
                                          {"s": np.array([-1, 2, 6])}, ["s"]),
    "reshape_copy_batch": lambda: one_node("Reshape", ("N", 3, 4), None,
                                           {"s": np.array([0, -1])}, ["s"]),
    "reshape_copy_dims": lambda: one_node("Reshape", ("N", 3, 4), None,
                                          {"s": np.array([0, 0, 2, 2])}, ["s"]),
    "transpose": lambda: one_node("Transpose", ("N", 3, 4, 5), None, perm=[0, 2, 3, 1]),
    "transpose_default": lambda: one_node("Transpose", (2, 3, 4), None),
    "softmax": lambda: one_node("Softmax", ("N", 7), None),
    "softmax_axis1_images": lambda: one_node("Softmax", ("N", 3, 2, 2), None, axis=1),
    "softmax_last_axis_3d": lambda: one_node("Softmax", ("N", 3, 5), None),
    "logsoftmax": lambda: one_node("LogSoftmax", ("N", 7), None),
    "logsoftmax_axis0": lambda: one_node("LogSoftmax", (4, 3), None, axis=0),
    "identity": lambda: one_node("Identity", ("N", 3), None),
    "dropout": lambda: one_node("Dropout", ("N", 3), None),
    "trilu_upper": lambda: one_node("Trilu", ("N", 4, 5), None),
    "trilu_lower_k": lambda: one_node("Trilu", (3, 4, 5), None, {"k": np.array(1)}, ["k"],
                                      upper=0),
    "boolean_logic": lambda: logic(),
}
# Cases whose op is newer than the oldest opset tested (Trilu came in opset 14).
MIN_OPSET = {"trilu_upper": 14, "trilu_lower_k": 14}

FEED_SHAPES = {"N": 3}


def _feed_shape(shape):
    return tuple(FEED_SHAPES.get(d, d) for d in shape)


@pytest.mark.parametrize("case,opset", [(case, opset) for case in sorted(CASES)
                                        for opset in OPSETS
                                        if opset >= MIN_OPSET.get(case, 0)])
def test_operator_matches_onnxruntime(case, opset):
    nodes, inputs, outputs, inits = CASES[case]()
    nodes = nodes if isinstance(nodes, list) else [nodes]
    proto = model(nodes, inputs, outputs, inits, opset)
    feeds = {name: normal(_feed_shape(shape), 7) * 3 for name, shape in inputs.items()}
    assert_matches_onnxruntime(proto, feeds)


def test_every_supported_operator_has_a_case():
    """Each op type dlsys says it imports is run by a test against a reference: the table
    above, or one of ONNX's own node cases that dlsys passes (Constant within the scalar
    cases)."""
    from onnx_testing import passing_backend_cases

    from dlsys.testing.onnx_backend import case_op_types

    covered = set()
    for build in CASES.values():
        nodes = build()[0]
        covered |= {n.op_type for n in (nodes if isinstance(nodes, list) else [nodes])}
    passing = list(passing_backend_cases().values())
    covered |= set(case_op_types(passing).values())
    covered |= {n.op_type for case in passing for n in case.model.graph.node}
    missing = sorted(set(donnx.supported_ops()) - covered)
    assert not missing, f"supported but run by no test against a reference: {missing}"


def test_constant_tensor_operand():
    """A Constant node holding a tensor becomes a buffer of the module, not a parameter."""
    constant = helper.make_node("Constant", [], ["k"], value=helper.make_tensor(
        "k", 1, (3,), [1.0, -2.0, 0.5]))
    proto = model([constant, helper.make_node("Mul", ["x", "k"], ["y"])], {"x": ("N", 3)},
                  {"y": ("N", 3)})
    assert_matches_onnxruntime(proto, {"x": normal((2, 3))})
    module = donnx.import_model(proto)
    assert module.parameters() == [] and list(module.state_dict()) == ["k"]


def test_session_describes_inputs_and_outputs_as_onnxruntime():
    import onnxruntime as ort

    nodes, inputs, outputs, inits = CASES["gemm_transB_row_bias"]()
    proto = model([nodes], {"x": ("N", 3)}, {"y": ("N", 5)}, inits)
    data = proto.SerializeToString()
    ours, theirs = donnx.InferenceSession(data), ort.InferenceSession(data)
    for mine, reference in [(ours.get_inputs(), theirs.get_inputs()),
                            (ours.get_outputs(), theirs.get_outputs())]:
        assert [(a.name, a.shape, a.type) for a in mine] == \
               [(a.name, a.shape, a.type) for a in reference]


@pytest.mark.parametrize("op_type,axis", [("Softmax", 1), ("LogSoftmax", -1)])
def test_softmax_in_training_mode_has_gradients(op_type, axis):
    """dlsys's softmax kernel has no gradient: in training mode the importer builds softmax
    from operators that have, with the same values."""
    from dlsys import autodiff as ad

    node = helper.make_node(op_type, ["x"], ["y"], axis=axis)
    proto = model([node], {"x": ("N", 3, 2)}, {"y": ("N", 3, 2)})
    x_value = normal((4, 3, 2)) * 3
    expected = donnx.InferenceSession(proto.SerializeToString()).run(None, {"x": x_value})[0]
    module = donnx.import_model(proto).train()
    x = ad.Variable("x")
    y = module(x)
    grad = ad.gradients(ad.sum_op(y * y), [x])[0]
    out, g = ad.Executor([y, grad]).run({x: x_value}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert g.shape == x_value.shape and np.abs(g).max() > 0
