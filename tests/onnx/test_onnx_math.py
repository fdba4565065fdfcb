"""ONNX's elementwise arithmetic, math functions, activations, comparisons and Where imported
by dlsys, one small model each, against onnxruntime within 1e-4; constant operands (numbers,
tensors, masks), constant folding, the old Clip's attributes, refusals naming the node, and
fine-tuning through the activations against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_testing import assert_matches_onnxruntime, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.graph import find_topo_sort  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402

OPSET = 18
X_SHAPE = ("N", 3, 4)
FEED_SHAPE = (2, 3, 4)

# op type -> the domain its input is drawn from: "all", "positive", "unit" (|x| < 1) or
# "above_one".
UNARY = {"Sqrt": "positive", "Log": "positive", "Reciprocal": "positive", "Abs": "all",
         "Neg": "all", "Exp": "all", "Erf": "all", "Sin": "all", "Cos": "all", "Tan": "all",
         "Atan": "all", "Asin": "unit", "Acos": "unit", "Sinh": "all", "Cosh": "all",
         "Asinh": "all", "Acosh": "above_one", "Atanh": "unit", "Floor": "all", "Ceil": "all",
         "Sign": "all", "Round": "all", "Relu": "all", "Sigmoid": "all", "Tanh": "all",
         "Softplus": "all", "Softsign": "all", "Mish": "all", "HardSwish": "all"}


def _feed(domain: str = "all", seed: int = 7) -> np.ndarray:
    x = normal(FEED_SHAPE, seed) * 3
    # Halves for Round (to even), and exact zeros for Sign.
    x.flat[:4] = [2.5, -0.5, 0.0, 1.5]
    if domain == "unit":
        return np.tanh(x / 3) * 0.99
    return {"all": x, "positive": np.abs(x) + 0.1, "above_one": np.abs(x) + 1}[domain]


@pytest.mark.parametrize("op_type", sorted(UNARY))
def test_unary_functions_match_onnxruntime(op_type):
    proto = model([helper.make_node(op_type, ["x"], ["y"])], {"x": X_SHAPE}, {"y": X_SHAPE},
                  opset=OPSET)
    assert_matches_onnxruntime(proto, {"x": _feed(UNARY[op_type])})


ACTIVATIONS = [
    ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.5}),
    ("Selu", {}), ("Selu", {"alpha": 1.5, "gamma": 2.0}), ("Celu", {"alpha": 2.0}),
    ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("ThresholdedRelu", {"alpha": 0.5}), ("ThresholdedRelu", {"alpha": 0.0}),
    ("Shrink", {}), ("Shrink", {"lambd": 1.0, "bias": 0.5}),
    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Swish", {"alpha": 0.5}),
]
# The first opset of each op type newer than OPSET, and the IR version onnxruntime reads it in.
NEWER_OPSETS = {"Gelu": (20, 9), "Swish": (24, 10)}


@pytest.mark.parametrize("op_type, attrs", ACTIVATIONS,
                         ids=[f"{t}-{'-'.join(a) or 'default'}" for t, a in ACTIVATIONS])
def test_activations_with_attributes_match_onnxruntime(op_type, attrs):
    opset, ir_version = NEWER_OPSETS.get(op_type, (OPSET, 8))
    graph = helper.make_graph([helper.make_node(op_type, ["x"], ["y"], **attrs)], "act",
                              [_value("x", X_SHAPE)], [_value("y", X_SHAPE)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=ir_version)
    onnx.checker.check_model(proto)
    assert_matches_onnxruntime(proto, {"x": _feed()})


@pytest.mark.parametrize("bounds", [(-1.0, 2.0), (0.5, None), (None, 0.5), (2.0, -1.0)])
def test_clip_bounds_as_inputs_match_onnxruntime(bounds):
    inits = {name: np.float32(v) for name, v in zip(("lo", "hi"), bounds) if v is not None}
    node = helper.make_node("Clip", ["x", "lo" if bounds[0] is not None else "",
                                     "hi" if bounds[1] is not None else ""], ["y"])
    proto = model([node], {"x": X_SHAPE}, {"y": X_SHAPE}, inits, OPSET)
    assert_matches_onnxruntime(proto, {"x": _feed()})


def test_clip_of_opset_10_reads_its_bounds_from_attributes():
    node = helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=1.0)
    graph = helper.make_graph([node], "clip", [_value("x", X_SHAPE)], [_value("y", X_SHAPE)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=5)
    assert_matches_onnxruntime(proto, {"x": _feed()})


def _value(name, shape, elem_type=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem_type, shape)


def _typed_model(nodes, inputs: dict, outputs: dict, initializers=None, opset=OPSET):
    """A model whose outputs declare their own types (``name -> (shape, type)``): bool
    outputs of comparisons, which ``onnx_testing.model`` declares float."""
    graph = helper.make_graph(
        nodes, "test", [_value(n, s) for n, s in inputs.items()],
        [_value(n, s, t) for n, (s, t) in outputs.items()],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    onnx.checker.check_model(proto)
    return proto


@pytest.mark.parametrize("op_type", ["Equal", "Less", "Greater", "LessOrEqual",
                                     "GreaterOrEqual"])
def test_comparisons_match_onnxruntime_with_ties_and_broadcasting(op_type):
    proto = _typed_model([helper.make_node(op_type, ["x", "y"], ["z"])],
                         {"x": X_SHAPE, "y": (4,)}, {"z": (X_SHAPE, TensorProto.BOOL)})
    x = np.round(_feed())  # whole numbers: ties with y's
    y = np.array([0, 1, -1, 2], np.float32)
    assert_matches_onnxruntime(proto, {"x": x, "y": y})


@pytest.mark.parametrize("op_type, attrs", [("IsNaN", {}), ("IsInf", {}),
                                             ("IsInf", {"detect_positive": 0})])
def test_nan_and_infinity_tests_match_onnxruntime(op_type, attrs):
    proto = _typed_model([helper.make_node(op_type, ["x"], ["y"], **attrs)], {"x": X_SHAPE},
                         {"y": (X_SHAPE, TensorProto.BOOL)})
    x = _feed()
    x.flat[4:8] = [np.nan, np.inf, -np.inf, -0.0]
    assert_matches_onnxruntime(proto, {"x": x})


def test_logical_operators_and_where_on_computed_masks_match_onnxruntime():
    """And, Or, Xor and Not of comparisons, and Where selecting with them: the masks are
    computed in the graph (a bool input is the session's affair)."""
    nodes = [helper.make_node("Less", ["x", "y"], ["less"]),
             helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("And", ["less", "positive"], ["both"]),
             helper.make_node("Or", ["less", "positive"], ["either"]),
             helper.make_node("Xor", ["both", "either"], ["one"]),
             helper.make_node("Not", ["one"], ["none_or_both"]),
             helper.make_node("Where", ["none_or_both", "x", "y"], ["picked"])]
    outputs = {"one": (X_SHAPE, TensorProto.BOOL), "none_or_both": (X_SHAPE, TensorProto.BOOL),
               "picked": (X_SHAPE, TensorProto.FLOAT)}
    proto = _typed_model(nodes, {"x": X_SHAPE, "y": (3, 1)}, outputs,
                         {"zero": np.float32(0)})
    assert_matches_onnxruntime(proto, {"x": _feed(), "y": np.array([[0.5], [-1], [2]],
                                                                   np.float32)})


def test_prelu_pow_and_binary_ops_with_constant_tensors_match_onnxruntime():
    """Constant tensor operands (a folded product of two Constant nodes, on either side of
    the tensor computed at run time), a per-channel PRelu slope, powers with a number, an
    integer exponent and a tensor exponent, and Where with a mask and -inf fixed by the
    file (an attention mask's pattern)."""
    def constant(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.asarray(array), name))

    rng = np.random.default_rng(3)
    mask = rng.random((3, 4)) > 0.5
    nodes = [constant("a", rng.normal(size=(3, 4)).astype(np.float32)),
             constant("b", np.float32([1, 2, 3, 4])),
             helper.make_node("Mul", ["a", "b"], ["ab"]),  # folded: a numpy (3, 4) tensor
             helper.make_node("Sub", ["ab", "x"], ["t"]),
             helper.make_node("Div", ["t", "b"], ["u"]),
             helper.make_node("PRelu", ["u", "slope"], ["v"]),
             constant("three", np.int64(3)),
             helper.make_node("Pow", ["v", "three"], ["cube"]),
             helper.make_node("Abs", ["cube"], ["size"]),
             helper.make_node("Pow", ["size", "exponent"], ["w"]),
             constant("mask", mask), constant("minus_inf", np.float32(-np.inf)),
             helper.make_node("Where", ["mask", "minus_inf", "w"], ["y"])]
    inits = {"slope": np.float32([[0.1], [0.2], [-0.3]]),
             "exponent": np.float32([0.5, 1.0, 2.0, 1.5])}
    proto = model(nodes, {"x": X_SHAPE}, {"y": X_SHAPE}, inits, OPSET)
    assert_matches_onnxruntime(proto, {"x": _feed()})


def test_integers_computed_at_run_time_meet_integer_constants_as_floats():
    """An ArgMax's index (a float in the graph) compared with, and offset by, int64
    constants, as an exported model's integer arithmetic is written."""
    def constant(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.asarray(array), name))

    nodes = [helper.make_node("ArgMax", ["x"], ["index"], axis=-1, keepdims=0),
             constant("two", np.int64(2)), constant("row", np.int64([1, 3, 0])),
             helper.make_node("Add", ["index", "two"], ["shifted"]),
             helper.make_node("GreaterOrEqual", ["shifted", "row"], ["y"])]
    proto = _typed_model(nodes, {"x": X_SHAPE}, {"y": (("N", 3), TensorProto.BOOL)})
    assert_matches_onnxruntime(proto, {"x": _feed()})


def test_arithmetic_on_constants_is_folded_into_a_reshape_target():
    """Shape arithmetic written with Equal, Where, Mul, Sqrt and Pow on Constant nodes (as
    exporters write it) is computed in numpy while the graph is built: the graph holds the
    reshape alone."""
    def constant(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.asarray(array), name))

    nodes = [constant("dims", np.int64([0, 3])), constant("zero", np.int64(0)),
             constant("minus_one", np.int64(-1)), constant("sixteen", np.float32(16)),
             helper.make_node("Equal", ["dims", "zero"], ["is_zero"]),
             helper.make_node("Where", ["is_zero", "minus_one", "dims"], ["target"]),
             helper.make_node("Sqrt", ["sixteen"], ["four"]),
             helper.make_node("Pow", ["four", "half"], ["two"]),
             helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Mul", ["r", "two"], ["y"])]
    proto = model(nodes, {"x": X_SHAPE}, {"y": None}, {"half": np.float32(0.5)}, OPSET)
    assert_matches_onnxruntime(proto, {"x": _feed()})
    module = donnx.import_model(proto)
    x = ad.Variable("x")
    ops = [n.op.name for n in find_topo_sort([module(x)]) if not n.op.is_placeholder]
    assert ops == ["Reshape", "MulByConst"]


def _raw_model(nodes):
    """A float model of ``nodes`` from x to y at opset 20, which ONNX's checker passes but
    ONNX's type inference would not (dlsys must refuse it itself)."""
    graph = helper.make_graph(nodes, "bad", [_value("x", X_SHAPE)], [_value("y", X_SHAPE)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


@pytest.mark.parametrize("nodes, pattern", [
    ([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
        np.int64([1, 2, 3, 4]), "k")), helper.make_node("Div", ["x", "k"], ["y"], name="div")],
     r"Div node 'div': input 1 \('k'\) is a constant of type int64: an integer division"),
    ([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
        np.int64([1, 2, 3, 2 ** 40]), "k")), helper.make_node("Add", ["x", "k"], ["y"],
                                                             name="add")],
     r"Add node 'add': input 1 \('k'\) holds integers beyond 2\*\*24"),
    ([helper.make_node("Clip", ["x", "x"], ["y"], name="clip")],
     r"Clip node 'clip': input 1 \('x'\), a bound, must be a constant number"),
    ([helper.make_node("Gelu", ["x"], ["y"], name="gelu", approximate="erf")],
     r"Gelu node 'gelu': approximate must be 'none' or 'tanh', got 'erf'"),
])
def test_what_dlsys_cannot_compute_is_refused_naming_the_node(nodes, pattern):
    with pytest.raises(OnnxError, match=pattern):
        donnx.import_model(_raw_model(nodes))


def test_fine_tuning_through_prelu_and_activations_matches_pytorch():
    """The imported model's PRelu slope is a parameter, and the gradients through PRelu,
    HardSwish, Elu, Clip, Softplus and Pow are PyTorch's."""
    torch = pytest.importorskip("torch")
    nodes = [helper.make_node("PRelu", ["x", "slope"], ["a"]),
             helper.make_node("HardSwish", ["a"], ["b"]),
             helper.make_node("Elu", ["b"], ["c"], alpha=0.5),
             helper.make_node("Clip", ["c", "lo", "hi"], ["d"]),
             helper.make_node("Softplus", ["d"], ["e"]),
             helper.make_node("Pow", ["e", "two"], ["y"])]
    slope = np.float32([[[0.25]], [[-0.5]], [[1.5]]])
    inits = {"slope": slope, "lo": np.float32(-0.4), "hi": np.float32(1.2),
             "two": np.float32(2.0)}
    proto = model(nodes, {"x": ("N", 3, 2, 2)}, {"y": ("N", 3, 2, 2)}, inits, OPSET)
    module = donnx.import_model(proto).train()
    assert [p.name for p in module.parameters()] == ["slope"]
    x_value = normal((2, 3, 2, 2), 4) * 3
    x = ad.Variable("x")
    y = module(x)
    grads = ad.gradients(ad.sum_op(y), [x, module.parameters()[0]])
    ours = ad.Executor(grads).run({x: x_value}, convert_to_numpy_ret_vals=True)

    tx = torch.tensor(x_value, requires_grad=True)
    ts = torch.tensor(slope, requires_grad=True)
    f = torch.nn.functional
    t = f.elu(f.hardswish(torch.where(tx > 0, tx, ts * tx)), 0.5).clamp(-0.4, 1.2)
    (f.softplus(t) ** 2).sum().backward()
    np.testing.assert_allclose(ours[0], tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours[1], ts.grad.numpy(), rtol=1e-4, atol=1e-5)
