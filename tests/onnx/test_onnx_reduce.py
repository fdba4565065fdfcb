"""ONNX's reductions, softmax, normalisations and LRN imported by dlsys, one small model each,
against onnxruntime within 1e-4; the opset-dependent forms (axes as an attribute or an input,
Softmax before and after opset 13), constant folding, and fine-tuning through them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_testing import IR_VERSION, assert_matches_onnxruntime, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402

REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum"]


def _reduce_model(op_type, axes, keepdims, opset, out_shape=None, **attrs):
    """``op_type`` over ``axes``: an attribute before opset 18 (ReduceSum: 13), an input
    after."""
    as_input = opset >= (13 if op_type == "ReduceSum" else 18)
    inits = {"axes": np.array(axes, np.int64)} if as_input and axes is not None else {}
    if not as_input and axes is not None:
        attrs["axes"] = axes
    node = helper.make_node(op_type, ["x", *inits], ["y"], keepdims=keepdims, **attrs)
    return model([node], {"x": ("N", 3, 4)}, {"y": out_shape}, inits, opset)


@pytest.mark.parametrize("op_type", REDUCTIONS)
def test_reductions_match_onnxruntime(op_type):
    x = np.abs(normal((2, 3, 4), 1)) + 0.5 if op_type == "ReduceLogSum" else normal((2, 3, 4))
    for axes, keepdims, opset in (([1], 1, 17), ([0, -1], 0, 18), (None, 1, 18)):
        assert_matches_onnxruntime(_reduce_model(op_type, axes, keepdims, opset), {"x": x})


def test_empty_axes_reduce_everything_or_nothing():
    x = normal((2, 3, 4))
    noop = _reduce_model("ReduceSum", [], 1, 18, noop_with_empty_axes=1)
    assert_matches_onnxruntime(noop, {"x": x})
    assert_matches_onnxruntime(_reduce_model("ReduceMax", [], 1, 18), {"x": x})


def test_axes_out_of_range_are_refused_naming_the_node():
    with pytest.raises(OnnxError, match=r"ReduceMean node 'y'.*axes \[3\]"):
        donnx.import_model(_reduce_model("ReduceMean", [3], 1, 17, ("N", 3, 4)))


def test_reduction_of_constants_is_folded():
    """A reduction of a Constant node is computed while the graph is built, then used as a
    reshape's target."""
    shape = helper.make_node("Constant", [], ["s"], value=helper.make_tensor(
        "s", TensorProto.INT64, (2, 2), [3, 2, 1, 4]))
    nodes = [shape, helper.make_node("ReduceMax", ["s"], ["t"], axes=[0], keepdims=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    proto = model(nodes, {"x": (2, 6)}, {"y": (3, 4)}, opset=17)
    assert_matches_onnxruntime(proto, {"x": normal((2, 6))})


def _arg_model(op_type, **attrs):
    node = helper.make_node(op_type, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "test", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ("N", 4, 5))], [helper.make_tensor_value_info(
            "y", TensorProto.INT64, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=IR_VERSION[17])
    return onnx.shape_inference.infer_shapes(proto)


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
def test_arg_extremes_match_onnxruntime(op_type):
    import onnxruntime as ort

    x = np.random.default_rng(0).integers(0, 3, size=(2, 4, 5)).astype(np.float32)  # ties
    for attrs in ({}, {"axis": -1, "keepdims": 0, "select_last_index": 1}):
        data = _arg_model(op_type, **attrs).SerializeToString()
        ours = donnx.InferenceSession(data).run(None, {"x": x})[0]
        theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        # The index is computed as a float; the session casts it to the declared int64.
        np.testing.assert_array_equal(np.asarray(ours).astype(np.int64), theirs)
        assert np.asarray(ours).shape == theirs.shape


def _one(op_type, shape, **attrs):
    return model([helper.make_node(op_type, ["x"], ["y"], **attrs)], {"x": shape}, {"y": shape})


CASES = {
    "softmax_axis0": lambda: _one("Softmax", (3, 4, 5), axis=0),
    "softmax_middle": lambda: _one("Softmax", ("N", 4, 5), axis=1),
    "logsoftmax_last": lambda: _one("LogSoftmax", ("N", 4, 5)),
    "hardmax_middle": lambda: _one("Hardmax", ("N", 4, 5), axis=1),
    "lrn": lambda: _one("LRN", ("N", 6, 3, 3), size=3, alpha=0.01, beta=0.75, bias=1.0),
    # onnxruntime takes odd sizes only; the even window is checked against numpy in
    # tests/ops/test_reduce_norm_ops.py.
    "lrn_wide": lambda: _one("LRN", ("N", 5, 2, 3), size=5, alpha=0.1, beta=0.5, bias=2.0),
    "lp_l1": lambda: _one("LpNormalization", ("N", 4, 5), axis=1, p=1),
    "lp_l2": lambda: _one("LpNormalization", ("N", 4, 5)),
    "mvn": lambda: _one("MeanVarianceNormalization", (2, 3, 4, 5)),
    "mvn_last": lambda: _one("MeanVarianceNormalization", ("N", 3, 4), axes=[2]),
    "layernorm_last": lambda: _normalization("LayerNormalization", ("N", 4, 6), (6,), (6,)),
    "layernorm_axis1_no_bias": lambda: _normalization("LayerNormalization", ("N", 4, 6),
                                                      (4, 6), None, axis=1),
    "layernorm_broadcast_scale": lambda: _normalization("LayerNormalization", ("N", 4, 6),
                                                        (6,), (1, 6), axis=1),
    "instancenorm": lambda: _normalization("InstanceNormalization", ("N", 3, 4, 5), (3,),
                                           (3,), epsilon=1e-3),
    "groupnorm": lambda: _normalization("GroupNormalization", ("N", 6, 2, 3), (6,), (6,),
                                        num_groups=2, opset=21),
    "variadic": lambda: _variadic(),
}


def _normalization(op_type, shape, scale, bias, opset=17, **attrs):
    inits = {"scale": normal(scale, 1)}
    if bias is not None:
        inits["bias"] = normal(bias, 2)
    node = helper.make_node(op_type, ["x", *inits], ["y"], **attrs)
    if opset in IR_VERSION:
        return model([node], {"x": shape}, {"y": shape}, inits, opset)
    # Opset 21 (GroupNormalization's scale per channel), which the shared helper does not
    # know yet: IR version 10.
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "xy"]
    graph = helper.make_graph([node], "test", values[:1], values[1:], [
        numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=10)


def _variadic():
    """Sum, Mean, Max and Min of three inputs that broadcast, one of them an initializer."""
    inputs = {"a": ("N", 3, 4), "b": (3, 1)}
    nodes = [helper.make_node(op, ["a", "b", "c"], [op.lower()])
             for op in ("Sum", "Mean", "Max", "Min")]
    return model(nodes, inputs, {op.lower(): None for op in ("Sum", "Mean", "Max", "Min")},
                 {"c": normal((4,), 3)})


def test_variadic_max_and_min_are_exact_beside_large_operands():
    nodes = [helper.make_node(op, ["x", "big"], [op.lower()]) for op in ("Max", "Min")]
    proto = model(nodes, {"x": ("N", 3)}, {"max": None, "min": None},
                  {"big": np.array([-1e8, 1e8, -1e8], np.float32)})
    x = normal((2, 3)) * 1e-3
    got_max, got_min = donnx.InferenceSession(proto.SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(got_max, np.maximum(x, [-1e8, 1e8, -1e8]))
    np.testing.assert_array_equal(got_min, np.minimum(x, [-1e8, 1e8, -1e8]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_normalisations_and_softmax_match_onnxruntime(case):
    proto = CASES[case]()
    feeds = {v.name: normal(tuple(d.dim_value or 2 for d in v.type.tensor_type.shape.dim), 5)
             * 2 for v in proto.graph.input if v.name not in {t.name for t in
                                                              proto.graph.initializer}}
    assert_matches_onnxruntime(proto, feeds)


def test_layernorm_statistics_outputs_match_onnxruntime():
    node = helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean", "inv_std"],
                            axis=1)
    proto = model([node], {"x": ("N", 3, 4)}, {"y": None, "mean": None, "inv_std": None},
                  {"scale": normal((3, 4), 1)})
    assert_matches_onnxruntime(proto, {"x": normal((2, 3, 4)) * 3})


def test_softmax_before_opset_13_flattens_at_its_axis():
    """Softmax of opset 11 runs over the matrix the axes from ``axis`` on flatten into."""
    from dlsys.onnx.ops import Context
    from dlsys.onnx.ops_reduce import softmax

    x = ad.Variable("x")
    values = normal((2, 3, 4))
    for op_type, opset, expected_axes in (("Softmax", 11, (1, 2)), ("Softmax", 13, (2,))):
        node = helper.make_node(op_type, ["x"], ["y"])
        ctx = Context(node, {}, {"x": (2, 3, 4)}, training=False)
        ctx.opset = opset
        got = ad.Executor([softmax(ctx, x)]).run({x: values}, convert_to_numpy_ret_vals=True)
        exps = np.exp(values - values.max(axis=expected_axes, keepdims=True))
        np.testing.assert_allclose(got[0], exps / exps.sum(axis=expected_axes, keepdims=True),
                                   rtol=1e-5, atol=1e-6)


def test_group_norm_of_opset_18_scales_each_group():
    """GroupNormalization-18 takes one scale and bias per group (onnx's checker now refuses
    the op at 18, so the converter is run directly)."""
    from dlsys.onnx.ops import Context
    from dlsys.onnx.ops_reduce import group_normalization

    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)
    scale, bias = normal((2,), 1), normal((2,), 2)
    ctx = Context(node, {"num_groups": 2}, {"x": (2, 4, 3)}, training=False)
    x = ad.Variable("x")
    values = normal((2, 4, 3), 3)
    y = group_normalization(ctx, x, scale, bias)
    got = ad.Executor([y]).run({x: values}, convert_to_numpy_ret_vals=True)[0]
    groups = values.reshape(2, 2, 6)
    normed = (groups - groups.mean(-1, keepdims=True)) / np.sqrt(groups.var(-1, keepdims=True)
                                                                 + 1e-5)
    expected = (normed * scale[:, None] + bias[:, None]).reshape(2, 4, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_fine_tuning_differentiates_every_converted_operator():
    """A model of a product, LRN, layer norm, softmax, a max, a log-sum-exp and variadic Max
    and Sum: the gradient of its output's sum in the product's weight equals PyTorch's."""
    torch = pytest.importorskip("torch")
    w = normal((4, 8), 1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["images"]),
             helper.make_node("LRN", ["images"], ["lrn"], size=3, alpha=0.5, bias=1.0),
             helper.make_node("Flatten", ["lrn"], ["rows"]),
             helper.make_node("LayerNormalization", ["rows", "scale"], ["norm"]),
             helper.make_node("Softmax", ["norm"], ["p"]),
             helper.make_node("ReduceMax", ["p"], ["top"], axes=[1], keepdims=1),
             helper.make_node("ReduceLogSumExp", ["norm"], ["lse"], axes=[1], keepdims=1),
             helper.make_node("Max", ["lse", "zero"], ["positive"]),
             helper.make_node("Sum", ["top", "positive"], ["y"])]
    inits = {"w": w, "shape": np.array([-1, 4, 2, 1]), "scale": normal((8,), 2),
             "zero": np.zeros(1, np.float32)}
    proto = model(nodes, {"x": ("N", 4)}, {"y": ("N", 1)}, inits, opset=17)
    module = donnx.import_model(proto).train()
    x = ad.Variable("x")
    weight = dict(module.named_parameters())["w"]
    grad = ad.gradients(ad.sum_op(module(x)), [weight])[0]
    x_value = normal((3, 4), 4)
    got = ad.Executor([grad]).run({x: x_value}, convert_to_numpy_ret_vals=True)[0]

    tw = torch.tensor(w, requires_grad=True)
    images = (torch.tensor(x_value) @ tw).reshape(-1, 4, 2, 1)
    rows = torch.nn.functional.local_response_norm(images, 3, 0.5, 0.75, 1.0).flatten(1)
    norm = torch.nn.functional.layer_norm(rows, (8,), torch.tensor(inits["scale"]), eps=1e-5)
    y = norm.softmax(1).amax(1) + torch.maximum(norm.logsumexp(1), torch.zeros(1))
    y.sum().backward()
    np.testing.assert_allclose(got, tw.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_fine_tuning_through_instance_mvn_and_lp_normalisations():
    """Gradients in InstanceNormalization's scale and bias and in the input, through MVN,
    LpNormalization and ReduceL1, against PyTorch's."""
    torch = pytest.importorskip("torch")
    inits = {"s": normal((4,), 1), "b": normal((4,), 2)}
    nodes = [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["i"]),
             helper.make_node("MeanVarianceNormalization", ["i"], ["m"], axes=[2, 3]),
             helper.make_node("LpNormalization", ["m"], ["l"], axis=1, p=2),
             helper.make_node("ReduceL1", ["l"], ["y"], axes=[1], keepdims=1)]
    module = donnx.import_model(model(nodes, {"x": ("N", 4, 2, 3)}, {"y": None}, inits))
    module.train()
    x = ad.Variable("x")
    params = dict(module.named_parameters())
    grads = ad.gradients(ad.sum_op(module(x)), [params["s"], params["b"], x])
    x_value = normal((2, 4, 2, 3), 4)
    got = ad.Executor(grads).run({x: x_value}, convert_to_numpy_ret_vals=True)

    tx, ts, tb = (torch.tensor(a, requires_grad=True) for a in (x_value, inits["s"],
                                                                 inits["b"]))
    i = torch.nn.functional.instance_norm(tx, weight=ts, bias=tb, eps=1e-5)
    centered = i - i.mean((2, 3), keepdim=True)
    m = centered / (centered ** 2).mean((2, 3), keepdim=True).sqrt()
    (m / m.norm(dim=1, keepdim=True)).abs().sum().backward()
    for g, expected in zip(got, (ts.grad, tb.grad, tx.grad)):
        np.testing.assert_allclose(g, expected.numpy(), rtol=1e-4, atol=1e-5)
