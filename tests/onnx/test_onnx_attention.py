"""ONNX's Attention and RotaryEmbedding (opset 23; dlsys/onnx/ops_attention.py): small models
run by dlsys and by onnxruntime; the composed attention graph's gradients against PyTorch's
scaled_dot_product_attention; what dlsys cannot build refused naming the node."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx_testing import normal, run_both  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402

OPSET, IR_VERSION = 23, 10
B, H, T, S, D = 2, 2, 3, 5, 4


def one_node_model(op_type: str, inputs: dict, outputs: list[str], **attrs) -> onnx.ModelProto:
    """A model of one ``op_type`` node; ``inputs`` maps names to (element type, shape)."""
    node = helper.make_node(op_type, list(inputs), outputs, **attrs)
    graph = helper.make_graph(
        [node], "test", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs if n])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return proto


def floats(shape) -> tuple:
    return TensorProto.FLOAT, shape


def assert_close(proto: onnx.ModelProto, feeds: dict) -> None:
    ours, theirs = run_both(proto, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# name -> (extra inputs beyond Q, K, V as name -> (type, shape), outputs, attributes)
ATTENTION_CASES = {
    "causal": ({}, ["Y"], {"is_causal": 1}),
    "float_mask_and_scores": ({"mask": floats((T, S))}, ["Y", "", "", "qk"],
                              {"qk_matmul_output_mode": 2, "softcap": 2.0}),
    "bool_mask": ({"mask": (TensorProto.BOOL, (B, 1, T, S))}, ["Y"], {}),
    "past_kv_causal": ({"mask": floats((T, S + 2)), "past_key": floats((B, H, 2, D)),
                        "past_value": floats((B, H, 2, D))}, ["Y", "present_key",
                                                               "present_value"],
                       {"is_causal": 1}),
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_matches_onnxruntime(case):
    extra, outputs, attrs = ATTENTION_CASES[case]
    inputs = {"Q": floats((B, H, T, D)), "K": floats((B, H, S, D)), "V": floats((B, H, S, D)),
              **extra}
    proto = one_node_model("Attention", inputs, outputs, **attrs)
    rng = np.random.default_rng(1)
    feeds = {}
    for seed, (name, (dtype, shape)) in enumerate(inputs.items()):
        feeds[name] = rng.random(shape) < 0.7 if dtype == TensorProto.BOOL \
            else normal(shape, seed)
    if "mask" in feeds and feeds["mask"].dtype == np.bool_:
        feeds["mask"][..., 0] = True  # every query sees a key: onnxruntime's NaN rows aside
    assert_close(proto, feeds)


def test_grouped_query_attention_3d_matches_onnxruntime():
    """Three-d inputs with the heads folded into the features, 4 query heads sharing 2
    key/value heads."""
    proto = one_node_model("Attention", {"Q": floats((B, T, 4 * D)), "K": floats((B, S, 2 * D)),
                                         "V": floats((B, S, 2 * 3))}, ["Y"],
                           q_num_heads=4, kv_num_heads=2)
    assert_close(proto, {"Q": normal((B, T, 4 * D), 0), "K": normal((B, S, 2 * D), 1),
                         "V": normal((B, S, 6), 2)})


def test_fully_masked_query_gets_zeros():
    """A query whose bool mask row is all false attends to nothing: ONNX's zero row, not
    the NaN a softmax of -inf alone gives."""
    proto = one_node_model("Attention", {"Q": floats((1, 1, 2, D)), "K": floats((1, 1, 2, D)),
                                         "V": floats((1, 1, 2, D)),
                                         "mask": (TensorProto.BOOL, (2, 2))}, ["Y"])
    mask = np.array([[False, False], [True, False]])
    feeds = {"Q": normal((1, 1, 2, D), 0), "K": normal((1, 1, 2, D), 1),
             "V": normal((1, 1, 2, D), 2), "mask": mask}
    (y,) = donnx.InferenceSession(proto.SerializeToString()).run(None, feeds)
    np.testing.assert_array_equal(y[0, 0, 0], np.zeros(D, np.float32))
    np.testing.assert_allclose(y[0, 0, 1], feeds["V"][0, 0, 0], rtol=1e-6)


def test_composed_attention_gradients_match_pytorch():
    torch = pytest.importorskip("torch")
    proto = one_node_model("Attention", {"Q": floats((B, H, T, D)), "K": floats((B, H, S, D)),
                                         "V": floats((B, H, S, D)), "mask": floats((T, S))},
                           ["Y"], is_causal=1)
    values = [normal((B, H, T, D), 0), normal((B, H, S, D), 1), normal((B, H, S, D), 2),
              normal((T, S), 3)]
    inputs = [ad.Variable(n) for n in ("Q", "K", "V", "mask")]
    y = donnx.import_model(proto).train()(*inputs)
    grads = ad.gradients(ad.sum_op(y * y), inputs[:3])
    ours = ad.Executor(grads).run(dict(zip(inputs, values)), convert_to_numpy_ret_vals=True)
    q, k, v = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in values[:3])
    # ONNX's causal mask starts at the first key (offset 0), as PyTorch's is_causal does.
    keep = torch.ones(T, S, dtype=torch.bool).tril()
    bias = torch.tensor(values[3], dtype=torch.float64).masked_fill(~keep, float("-inf"))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out.pow(2).sum().backward()
    for mine, reference in zip(ours, (q, k, v)):
        np.testing.assert_allclose(mine, reference.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_matches_onnxruntime(interleaved):
    """Rotations picked by position ids from (positions, R/2) caches, over the first 4 of 6
    features of each head (the rest pass through)."""
    proto = one_node_model("RotaryEmbedding", {
        "x": floats((B, T, 2 * 6)), "cos": floats((8, 2)), "sin": floats((8, 2)),
        "ids": (TensorProto.INT64, (B, T))}, ["y"], interleaved=interleaved, num_heads=2,
        rotary_embedding_dim=4)
    angles = normal((8, 2), 1)
    feeds = {"x": normal((B, T, 12), 0), "cos": np.cos(angles), "sin": np.sin(angles),
             "ids": np.array([[0, 1, 2], [5, 7, 3]], np.int64)}
    assert_close(proto, feeds)


def test_rotary_embedding_4d_without_position_ids_matches_onnxruntime():
    proto = one_node_model("RotaryEmbedding", {"x": floats((B, H, T, D)),
                                               "cos": floats((B, T, D // 2)),
                                               "sin": floats((B, T, D // 2))}, ["y"])
    angles = normal((B, T, D // 2), 1)
    assert_close(proto, {"x": normal((B, H, T, D), 0), "cos": np.cos(angles),
                         "sin": np.sin(angles)})


def test_attention_refusals_name_the_node():
    proto = one_node_model("Attention", {"Q": floats((B, T, 8)), "K": floats((B, S, 8)),
                                         "V": floats((B, S, 8))}, ["Y"], q_num_heads=3,
                           kv_num_heads=2)
    with pytest.raises(OnnxError, match="Attention node.*q_num_heads"):
        donnx.import_model(proto)(*[ad.Variable(n) for n in ("Q", "K", "V")])


def test_plain_causal_attention_over_long_keys_is_the_fused_operator():
    """No mask but the causal one dlsys's fused operator computes (T == S), keys past
    ``FUSED_FROM_LENGTH``: one fused node, which onnxruntime agrees with."""
    from dlsys.ops.attention import FUSED_FROM_LENGTH, attention_strategy

    shape = (1, 1, FUSED_FROM_LENGTH, 4)
    proto = one_node_model("Attention", {n: floats(shape) for n in "QKV"}, ["Y"], is_causal=1)
    y = donnx.import_model(proto)(*[ad.Variable(n) for n in "QKV"])
    assert y.op.name == ("MatMul" if attention_strategy() == "unfused" else "Attention")
    assert_close(proto, {n: normal(shape, seed) for seed, n in enumerate("QKV")})
