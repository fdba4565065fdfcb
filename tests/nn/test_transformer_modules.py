"""Transformer modules and functions against PyTorch: Embedding, LayerNorm, GELU, softmax,
scaled_dot_product_attention, MultiheadAttention and TransformerEncoderLayer in float64 on
odd sizes (E=12, H=3, T=7, B=2), weights moved across by state dicts, outputs and the
gradients of every parameter within 1e-6; both layouts, causal and padding masks (boolean
and float), pre- and post-norm; named errors; model files."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

import dlsys
from dlsys import autodiff as ad
from dlsys import nn, ops
from dlsys.errors import ArgumentError, ArgumentTypeError, DataError, DlsysError, ShapeError
from dlsys.nn import functional as F
from dlsys.nn import serialization

try:
    import torch
except ImportError:
    torch = None

E, H, T, B = 12, 3, 7, 2
RTOL, ATOL = 1e-6, 1e-9

needs_torch = pytest.mark.skipif(torch is None, reason="compared with PyTorch, not installed")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _run_with_grads(output, feeds: dict, wrt: list, upstream: np.ndarray):
    """``output`` and the gradients of ``sum(output * upstream)`` for ``wrt``, in float64."""
    g = ad.Variable("upstream")
    loss = ops.sum_op(output * g)
    executor = ad.Executor([output, *ad.gradients(loss, wrt)], dtype="float64")
    out, *grads = executor.run({**feeds, g: upstream}, convert_to_numpy_ret_vals=True)
    return out, grads


def _torch_grads(out, upstream, tensors):
    (out * torch.from_numpy(upstream)).sum().backward()
    return [t.grad.numpy() for t in tensors]


def _to_torch(module, torch_module):
    """``torch_module`` in float64 holding ``module``'s weights (float32 values, exact in
    float64), so both compute from the same numbers."""
    torch_module.double()
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in module.state_dict().items()}
    missing, unexpected = torch_module.load_state_dict(state, strict=False)
    assert not missing and all(key.endswith(".seed") for key in unexpected)
    return torch_module


def _close(got, want, what: str = ""):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


def _check_module(module, torch_module, inputs: dict, call, torch_call):
    """Forward values and the gradients of every parameter and input against PyTorch.

    ``inputs``: name -> array; ``call(nodes)`` builds dlsys's output from placeholders of
    those names, ``torch_call(torch_module, tensors)`` PyTorch's from tensors."""
    torch_module = _to_torch(module, torch_module)
    nodes = {name: ad.Variable(name) for name in inputs}
    output = call(nodes)
    names = [name for name, _ in module.named_parameters()]
    params = [param for _, param in module.named_parameters()]
    tensors = {name: torch.tensor(value, requires_grad=True) for name, value in inputs.items()}
    want = torch_call(torch_module, tensors)
    upstream = _rng(9).normal(size=tuple(want.shape))
    got, grads = _run_with_grads(output, {nodes[k]: v for k, v in inputs.items()},
                                 params + list(nodes.values()), upstream)
    _close(got, want.detach().numpy(), "output")
    torch_params = dict(torch_module.named_parameters())
    want_grads = _torch_grads(want, upstream, [torch_params[n] for n in names]
                              + list(tensors.values()))
    for name, got_grad, want_grad in zip(names + list(inputs), grads, want_grads):
        _close(got_grad, want_grad, name)


# ------------------------------------------------------------------ Embedding, LayerNorm, GELU
def test_embedding_names_shapes_and_normal_initialisation():
    dlsys.manual_seed(0)
    layer = nn.Embedding(400, 50)
    assert [(n, p.shape) for n, p in layer.named_parameters()] == [("weight", (400, 50))]
    weight = layer.weight.numpy()
    assert abs(weight.mean()) < 0.02 and abs(weight.std() - 1) < 0.02


@needs_torch
def test_embedding_rows_and_repeated_ids_gradient_match_pytorch():
    layer = nn.Embedding(10, E)
    ids = np.array([[1, 4, 4, 9, 0, 1, 1], [3, 3, 3, 2, 8, 7, 4]], np.int64)
    torch_layer = _to_torch(layer, torch.nn.Embedding(10, E))
    x = ad.Variable("ids")
    want = torch_layer(torch.from_numpy(ids))
    upstream = _rng(1).normal(size=(B, T, E))
    got, (grad,) = _run_with_grads(layer(x), {x: ids}, [layer.weight], upstream)
    _close(got, want.detach().numpy())
    (want_grad,) = _torch_grads(want, upstream, [torch_layer.weight])
    _close(grad, want_grad)


def test_embedding_refuses_ids_outside_its_table_before_any_kernel_runs():
    layer = nn.Embedding(10, E)
    x = ad.Variable("ids")
    executor = ad.Executor([layer(x)])
    with pytest.raises(DlsysError, match="10"):
        executor.run({x: np.array([[1, 10]], np.int64)})


def test_layer_norm_and_gelu_named_errors():
    with pytest.raises(ShapeError, match="last axis only"):
        nn.LayerNorm((4, E))
    with pytest.raises(ArgumentError, match="eps"):
        nn.LayerNorm(E, eps=0)
    with pytest.raises(ArgumentTypeError, match="normalized_shape"):
        nn.LayerNorm("12")
    with pytest.raises(ArgumentError, match="approximate"):
        nn.GELU("sigmoid")
    assert [(n, p.shape) for n, p in nn.LayerNorm((E,)).named_parameters()] == [
        ("weight", (E,)), ("bias", (E,))]
    assert list(nn.LayerNorm(E, bias=False).state_dict()) == ["weight"]


@needs_torch
def test_linear_takes_sequences():
    """A Linear over (B, T, in_features) applies to every position, as PyTorch's."""
    layer = nn.Linear(E, 5)
    x = _rng(22).normal(size=(B, T, E))
    _check_module(layer, torch.nn.Linear(E, 5), {"x": x}, lambda n: layer(n["x"]),
                  lambda m, t: m(t["x"]))
    node = ad.Variable("x")
    (got,) = ad.Executor([F.linear(node, layer.weight)], dtype="float64").run({node: x}, True)
    _close(got, x @ layer.weight.numpy().T.astype(np.float64))


@needs_torch
@pytest.mark.parametrize("normalized_shape", [E, (E,)])
def test_layer_norm_matches_pytorch_with_gradients(normalized_shape):
    layer = nn.LayerNorm(normalized_shape, eps=1e-4)
    layer.weight.assign(_rng(2).uniform(0.5, 1.5, E))
    layer.bias.assign(_rng(3).normal(size=E))
    x = _rng(4).normal(2.0, 3.0, size=(B, T, E))
    _check_module(layer, torch.nn.LayerNorm(E, eps=1e-4), {"x": x},
                  lambda n: layer(n["x"]), lambda m, t: m(t["x"]))


@needs_torch
def test_layer_norm_without_affine_parameters():
    layer = nn.LayerNorm(E, elementwise_affine=False)
    assert layer.state_dict() == {}
    x_node = ad.Variable("x")
    x = _rng(5).normal(size=(3, E))
    (got,) = ad.Executor([layer(x_node)], dtype="float64").run({x_node: x}, True)
    want = torch.nn.functional.layer_norm(torch.from_numpy(x), (E,))
    _close(got, want.numpy())


@needs_torch
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_pytorch_with_gradient(approximate):
    x = _rng(6).normal(0, 3, size=(B, T, E))
    node = ad.Variable("x")
    upstream = _rng(7).normal(size=x.shape)
    got, (grad,) = _run_with_grads(nn.GELU(approximate)(node), {node: x}, [node], upstream)
    tensor = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.gelu(tensor, approximate=approximate)
    _close(got, want.detach().numpy())
    _close(grad, _torch_grads(want, upstream, [tensor])[0])


@needs_torch
@pytest.mark.parametrize("dim", [-1, 1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_and_log_softmax_match_pytorch_along_any_axis(name, dim):
    x = _rng(8).normal(0, 5, size=(B, T, E))
    node = ad.Variable("x")
    upstream = _rng(9).normal(size=x.shape)
    got, (grad,) = _run_with_grads(getattr(F, name)(node, dim), {node: x}, [node], upstream)
    tensor = torch.tensor(x, requires_grad=True)
    want = getattr(torch.nn.functional, name)(tensor, dim=dim)
    _close(got, want.detach().numpy())
    _close(grad, _torch_grads(want, upstream, [tensor])[0])


# --------------------------------------------------------------- scaled_dot_product_attention
def _padding(keys: int, valid: list[int]) -> np.ndarray:
    """(B, 1, 1, S) boolean: True where a key may be attended (within each row's length)."""
    return (np.arange(keys)[None, :] < np.array(valid)[:, None])[:, None, None, :]


SDPA_MASKS = {
    "none": lambda s: None,
    "padding, boolean": lambda s: _padding(s, [s, 4]),
    "padding, float": lambda s: np.where(_padding(s, [3, s]), 0.0, -np.inf),
    "float (T, S)": lambda s: _rng(10).normal(size=(T, s)),
}


@needs_torch
@pytest.mark.parametrize("keys", [T, 5])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", list(SDPA_MASKS))
def test_scaled_dot_product_attention_matches_pytorch(mask_kind, causal, keys):
    if causal and keys != T:
        pytest.skip("PyTorch aligns a causal mask top-left where T != S, dlsys bottom-right "
                    "(test_causal_mask_aligns_the_last_query_with_the_last_key)")
    rng = _rng(11)
    arrays = {"q": rng.normal(size=(B, H, T, 4)), "k": rng.normal(size=(B, H, keys, 4)),
              "v": rng.normal(size=(B, H, keys, 5))}
    mask = SDPA_MASKS[mask_kind](keys)
    nodes = {name: ad.Variable(name) for name in arrays}
    tensors = {name: torch.tensor(a, requires_grad=True) for name, a in arrays.items()}
    torch_mask = None if mask is None else torch.from_numpy(mask)
    if causal and mask is not None:  # PyTorch takes one or the other: the mask with both
        allowed = torch.ones(T, keys, dtype=torch.bool).tril()
        torch_mask = (torch_mask & allowed if mask.dtype == bool
                      else torch_mask.masked_fill(~allowed, -np.inf))
    want = torch.nn.functional.scaled_dot_product_attention(
        *tensors.values(), attn_mask=torch_mask, is_causal=causal and mask is None)
    output = F.scaled_dot_product_attention(*nodes.values(), attn_mask=mask, is_causal=causal)
    upstream = rng.normal(size=tuple(want.shape))
    got, grads = _run_with_grads(output, {nodes[k]: v for k, v in arrays.items()},
                                 list(nodes.values()), upstream)
    _close(got, want.detach().numpy())
    for name, grad, want_grad in zip(arrays, grads,
                                     _torch_grads(want, upstream, list(tensors.values()))):
        _close(grad, want_grad, name)


@needs_torch
def test_scaled_dot_product_attention_takes_a_scale_and_a_fed_mask():
    rng = _rng(12)
    q, k, v = (rng.normal(size=(B, H, T, 4)) for _ in range(3))
    mask = np.where(_padding(T, [5, 2]), 0.0, -np.inf)
    nodes = [ad.Variable(name) for name in ("q", "k", "v", "mask")]
    output = F.scaled_dot_product_attention(*nodes[:3], attn_mask=nodes[3], scale=0.3)
    (got,) = ad.Executor([output], dtype="float64").run(dict(zip(nodes, (q, k, v, mask))),
                                                        True)
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v, mask)), scale=0.3)
    _close(got, want.numpy())


def test_causal_mask_aligns_the_last_query_with_the_last_key():
    """With T < S (new queries after a cache of keys), query i sees keys j <= i + S - T."""
    rng = _rng(13)
    q, k, v = rng.normal(size=(1, 1, 3, 4)), rng.normal(size=(1, 1, 5, 4)), rng.normal(
        size=(1, 1, 5, 2))
    nodes = [ad.Variable(name) for name in "qkv"]
    output = F.scaled_dot_product_attention(*nodes, is_causal=True)
    (got,) = ad.Executor([output], dtype="float64").run(dict(zip(nodes, (q, k, v))), True)
    scores = q @ k.swapaxes(-1, -2) / 2.0
    scores[..., np.arange(5)[None, :] > np.arange(3)[:, None] + 2] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    _close(got, weights / weights.sum(-1, keepdims=True) @ v)


def test_attention_masks_that_do_not_broadcast_are_named_before_any_kernel_runs():
    nodes = [ad.Variable(name) for name in "qkv"]
    with pytest.raises(ShapeError, match="attn_mask"):
        F.scaled_dot_product_attention(*nodes, attn_mask=np.ones((1, 1, 1, T, T), bool))
    output = F.scaled_dot_product_attention(*nodes, attn_mask=np.ones((T, 5), bool))
    q = np.zeros((B, H, T, 4))
    with pytest.raises(ShapeError, match="attn_mask"):
        ad.Executor([output], dtype="float64").run({n: q for n in nodes})
    # A mask larger than the scores would widen them: refused as well.
    output = F.scaled_dot_product_attention(*nodes, attn_mask=np.ones((4, H, T, T), bool))
    with pytest.raises(ShapeError, match="attn_mask"):
        ad.Executor([output], dtype="float64").run({n: q for n in nodes})
    with pytest.raises(ArgumentTypeError, match="boolean or float"):
        F.scaled_dot_product_attention(*nodes, attn_mask=np.ones((T, T), np.int64))
    with pytest.raises(ArgumentError, match="dropout_p"):
        F.scaled_dot_product_attention(*nodes, dropout_p=1.5)


def test_attention_dropout_drops_weights_and_scales_the_rest():
    """With equal scores every weight is 1 / S; dropout keeps each with probability 1 - p,
    scaled to 2 / S at p = 0.5, so an output row of ones becomes 2 / S times the kept
    count: about 1 on average, and another draw at every run."""
    nodes = [ad.Variable(name) for name in "qkv"]
    keys = 16
    output = F.scaled_dot_product_attention(*nodes, dropout_p=0.5)
    executor = ad.Executor([output])
    feeds = {nodes[0]: np.zeros((4, 2, 32, 3), np.float32),
             nodes[1]: np.zeros((4, 2, keys, 3), np.float32),
             nodes[2]: np.ones((4, 2, keys, 1), np.float32)}
    first, second = (executor.run(feeds, True)[0] for _ in range(2))
    kept = first * keys / 2
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-4)
    assert abs(first.mean() - 1) < 0.05 and not np.array_equal(first, second)


# ---------------------------------------------------------------------- MultiheadAttention
def test_multihead_attention_names_shapes_and_initialisation():
    dlsys.manual_seed(0)
    attention = nn.MultiheadAttention(E, H)
    assert [(n, p.shape) for n, p in attention.named_parameters()] == [
        ("in_proj_weight", (3 * E, E)), ("in_proj_bias", (3 * E,)),
        ("out_proj.weight", (E, E)), ("out_proj.bias", (E,))]
    state = attention.state_dict()
    bound = np.sqrt(6 / (E + 3 * E))  # xavier_uniform over (3E, E)
    assert bound * 0.9 < np.abs(state["in_proj_weight"]).max() <= bound
    assert not state["in_proj_bias"].any() and not state["out_proj.bias"].any()
    assert np.abs(state["out_proj.weight"]).max() <= 1 / np.sqrt(E)
    assert list(nn.MultiheadAttention(E, H, bias=False).state_dict()) == [
        "in_proj_weight", "out_proj.weight"]
    if torch is not None:
        assert list(torch.nn.MultiheadAttention(E, H).state_dict()) == list(state)


def _causal_bool(t, s):
    """PyTorch MultiheadAttention's boolean causal mask: True where attending is refused."""
    return np.triu(np.ones((t, s), bool), 1)


MHA_MASKS = {
    "none": lambda: {},
    "causal alone": lambda: {"is_causal": True},
    "boolean (T, S)": lambda: {"attn_mask": _causal_bool(T, T)},
    "float (B * H, T, S)": lambda: {"attn_mask": _rng(14).normal(size=(B * H, T, T))},
    "boolean key padding": lambda: {"key_padding_mask": np.arange(T)[None, :] >= np.array(
        [[T], [4]])},
    "float key padding and causal": lambda: {
        "key_padding_mask": np.where(np.arange(T)[None, :] >= np.array([[5], [T]]), -np.inf,
                                     0.0), "is_causal": True},
}


def _torch_mha_masks(masks: dict) -> dict:
    """The same masks as PyTorch's MultiheadAttention takes them: is_causal only with the
    causal mask itself."""
    out = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in masks.items()}
    if masks.get("is_causal"):
        out["attn_mask"] = torch.from_numpy(_causal_bool(T, T))
        if "key_padding_mask" in masks and masks["key_padding_mask"].dtype != bool:
            out["attn_mask"] = torch.from_numpy(np.where(_causal_bool(T, T), -np.inf, 0.0))
    return out


@needs_torch
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask_kind", list(MHA_MASKS))
def test_multihead_self_attention_matches_pytorch(mask_kind, batch_first):
    dlsys.manual_seed(1)
    attention = nn.MultiheadAttention(E, H, batch_first=batch_first)
    attention.in_proj_bias.assign(_rng(15).normal(size=3 * E))  # zero at first
    attention.out_proj.bias.assign(_rng(16).normal(size=E))
    x = _rng(17).normal(size=(B, T, E) if batch_first else (T, B, E))
    masks = MHA_MASKS[mask_kind]()
    torch_masks = _torch_mha_masks(masks)
    _check_module(attention, torch.nn.MultiheadAttention(E, H, batch_first=batch_first),
                  {"x": x},
                  lambda n: attention(n["x"], n["x"], n["x"], **masks)[0],
                  lambda m, t: m(t["x"], t["x"], t["x"], need_weights=False,
                                 **torch_masks)[0])


@needs_torch
@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_cross_attention_without_biases_matches_pytorch(batch_first):
    attention = nn.MultiheadAttention(E, H, bias=False, batch_first=batch_first)
    rng = _rng(18)
    layout = (lambda length: (B, length, E)) if batch_first else (lambda length: (length, B, E))
    inputs = {"query": rng.normal(size=layout(T)), "key": rng.normal(size=layout(5)),
              "value": rng.normal(size=layout(5))}
    padding = np.arange(5)[None, :] >= np.array([[5], [2]])
    _check_module(attention, torch.nn.MultiheadAttention(E, H, bias=False,
                                                          batch_first=batch_first), inputs,
                  lambda n: attention(*n.values(), key_padding_mask=padding)[0],
                  lambda m, t: m(*t.values(), key_padding_mask=torch.from_numpy(padding),
                                 need_weights=False)[0])


@needs_torch
def test_multihead_attention_takes_a_fed_mask_with_an_array_key_padding_mask():
    attention = nn.MultiheadAttention(E, H)
    x, mask = ad.Variable("x"), ad.Variable("mask")
    padding = np.arange(T)[None, :] >= np.array([[T], [5]])
    values = _rng(24).normal(size=(T, B, E))
    additive = np.where(_causal_bool(T, T), -np.inf, 0.0)
    output = attention(x, x, x, mask, key_padding_mask=padding)[0]
    (got,) = ad.Executor([output], dtype="float64").run({x: values, mask: additive}, True)
    torch_attention = _to_torch(attention, torch.nn.MultiheadAttention(E, H))
    with torch.no_grad():
        want = torch_attention(*[torch.from_numpy(values)] * 3, need_weights=False,
                               attn_mask=torch.from_numpy(additive),
                               key_padding_mask=torch.from_numpy(
                                   np.where(padding, -np.inf, 0.0)))[0]
    _close(got, want.numpy())


def test_multihead_attention_drops_weights_in_training_only():
    attention = nn.MultiheadAttention(E, H, dropout=0.5)
    x = ad.Variable("x")
    values = _rng(23).normal(size=(T, B, E)).astype(np.float32)
    train = ad.Executor([attention(x, x, x)[0]]).run({x: values}, True)[0]
    attention.eval()
    evaluated = ad.Executor([attention(x, x, x)[0]]).run({x: values}, True)[0]
    plain = nn.MultiheadAttention(E, H)
    plain.load_state_dict(attention.state_dict())
    want = ad.Executor([plain(x, x, x)[0]]).run({x: values}, True)[0]
    np.testing.assert_allclose(evaluated, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(train, want, rtol=1e-3)


def test_multihead_attention_named_errors():
    with pytest.raises(ShapeError, match="embed_dim 12 is not divisible by num_heads 5"):
        nn.MultiheadAttention(12, 5)
    with pytest.raises(ArgumentError, match="dropout"):
        nn.MultiheadAttention(12, 3, dropout=-0.1)
    attention = nn.MultiheadAttention(E, H)
    x = ad.Variable("x")
    with pytest.raises(ArgumentError, match="need_weights"):
        attention(x, x, x, need_weights=True)
    with pytest.raises(ShapeError, match=r"\(B \* num_heads, T, S\)"):
        attention(x, x, x, attn_mask=np.zeros((4, T, T)))
    with pytest.raises(ShapeError, match="key_padding_mask must be"):
        attention(x, x, x, key_padding_mask=np.zeros((B, 1, T), bool))
    with pytest.raises(ArgumentTypeError, match="query"):
        attention(np.zeros((T, B, E)), x, x)
    with pytest.raises(ArgumentTypeError, match=r"key_padding_mask must be an array"):
        attention(x, x, x, key_padding_mask=ad.Variable("padding"))
    with pytest.raises(ShapeError, match="do not broadcast together"):
        attention(x, x, x, attn_mask=np.zeros((T, T)), key_padding_mask=np.zeros((B, 5)))


# ------------------------------------------------------------------ TransformerEncoderLayer
def test_encoder_layer_submodules_and_state_keys_follow_pytorch():
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=20)
    assert [name for name, _ in layer.named_modules()][1:] == [
        "self_attn", "self_attn.out_proj", "linear1", "dropout", "linear2", "norm1", "norm2",
        "dropout1", "dropout2"]
    params = [name for name, _ in layer.named_parameters()]
    if torch is not None:
        assert params == [name for name, _ in torch.nn.TransformerEncoderLayer(
            E, H, dim_feedforward=20).named_parameters()]
    with pytest.raises(ArgumentError, match="activation"):
        nn.TransformerEncoderLayer(E, H, activation="tanh")
    with pytest.raises(ShapeError, match="not divisible"):
        nn.TransformerEncoderLayer(E, 5)


@needs_torch
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation, batch_first, masks", [
    ("relu", False, {}),
    ("gelu", True, {"is_causal": True}),
    ("relu", True, {"src_mask": _causal_bool(T, T)}),
    ("gelu", False, {"src_key_padding_mask": np.arange(T)[None, :] >= np.array([[T], [3]])}),
])
def test_encoder_layer_matches_pytorch(norm_first, activation, batch_first, masks):
    dlsys.manual_seed(2)
    kwargs = {"dim_feedforward": 20, "dropout": 0.0, "activation": activation,
              "batch_first": batch_first, "norm_first": norm_first, "layer_norm_eps": 1e-4}
    layer = nn.TransformerEncoderLayer(E, H, **kwargs)
    rng = _rng(19)
    for name in ("norm1", "norm2"):
        getattr(layer, name).weight.assign(rng.uniform(0.5, 1.5, E))
        getattr(layer, name).bias.assign(rng.normal(size=E))
    layer.self_attn.in_proj_bias.assign(rng.normal(size=3 * E))
    x = rng.normal(size=(B, T, E) if batch_first else (T, B, E))
    torch_masks = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                   for k, v in masks.items()}
    if masks.get("is_causal"):
        torch_masks["src_mask"] = torch.from_numpy(_causal_bool(T, T))
    _check_module(layer, torch.nn.TransformerEncoderLayer(E, H, **kwargs), {"x": x},
                  lambda n: layer(n["x"], **masks),
                  lambda m, t: m(t["x"], **torch_masks))


@needs_torch
def test_encoder_layer_in_eval_mode_drops_nothing():
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=20, dropout=0.5).eval()
    x = _rng(20).normal(size=(T, B, E))
    torch_layer = _to_torch(layer, torch.nn.TransformerEncoderLayer(E, H, 20, 0.5)).eval()
    node = ad.Variable("x")
    (got,) = ad.Executor([layer(node)], dtype="float64").run({node: x}, True)
    with torch.no_grad():
        _close(got, torch_layer(torch.from_numpy(x)).numpy())


@needs_torch
def test_pytorch_weights_load_into_dlsys():
    """PyTorch's state dicts load as they are: MultiheadAttention's strictly, an encoder
    layer's with strict=False (dlsys's dropouts keep their seeds as state)."""
    torch.manual_seed(0)
    torch_layer = torch.nn.TransformerEncoderLayer(E, H, 20, 0.0, batch_first=True).eval()
    state = {k: v.numpy() for k, v in torch_layer.state_dict().items()}
    attention = nn.MultiheadAttention(E, H, batch_first=True)
    attention.load_state_dict({k.removeprefix("self_attn."): v for k, v in state.items()
                               if k.startswith("self_attn.")})
    layer = nn.TransformerEncoderLayer(E, H, 20, 0.0, batch_first=True)
    layer.load_state_dict(state, strict=False)
    x = _rng(25).normal(size=(B, T, E)).astype(np.float32)
    node = ad.Variable("x")
    got = ad.Executor([layer(node), attention(node, node, node)[0]]).run({node: x}, True)
    with torch.no_grad():
        want = [torch_layer(torch.from_numpy(x)), torch_layer.self_attn(
            *[torch.from_numpy(x)] * 3, need_weights=False)[0]]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ model files
def _gpt_like():
    return nn.Sequential(nn.Embedding(11, E),
                         nn.TransformerEncoderLayer(E, H, 20, 0.0, "gelu", batch_first=True,
                                                    norm_first=True),
                         nn.LayerNorm(E), nn.Linear(E, 11))


def test_model_files_state_the_new_layers_without_building_them():
    model = nn.Sequential(_gpt_like(), nn.MultiheadAttention(E, H, bias=False), nn.GELU("tanh"),
                          nn.LayerNorm((E,), elementwise_affine=False),
                          nn.LayerNorm(E, bias=False))
    expected = {name: value.shape for name, value in model.state_dict().items()}
    assert serialization.state_shapes(serialization.architecture(model), "m") == expected


def test_a_replaced_child_is_refused_at_save(tmp_path):
    attention = nn.MultiheadAttention(E, H)
    attention.out_proj = nn.Linear(E, 2 * E)
    with pytest.raises(ArgumentTypeError, match="out_proj"):
        dlsys.save(attention, tmp_path / "attention.npz")
    assert not list(tmp_path.iterdir())


def test_a_transformer_model_file_round_trips(tmp_path):
    dlsys.manual_seed(3)
    model = _gpt_like()
    path = dlsys.save(model, tmp_path / "gpt.npz")
    loaded = dlsys.load(path)
    assert repr(loaded) == repr(model)
    assert all(np.array_equal(a, loaded.state_dict()[k]) for k, a in model.state_dict().items())
    ids = _rng(21).integers(0, 11, size=(B, T))
    outputs = []
    for m in (model, loaded):
        x = ad.Variable("ids")
        outputs.append(ad.Executor([m(x)]).run({x: ids}, True)[0])
    np.testing.assert_array_equal(*outputs)


def test_a_model_file_with_a_bad_attention_config_is_a_data_error(tmp_path):
    path = dlsys.save(nn.Sequential(nn.MultiheadAttention(E, H)), tmp_path / "a.npz")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(np.lib.format.read_array(
        io.BytesIO(members["__dlsys_model__.npy"])).tobytes())
    header["architecture"]["children"][0]["config"]["num_heads"] = 5
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.frombuffer(json.dumps(header).encode(), np.uint8))
    members["__dlsys_model__.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(DataError, match="not divisible"):
        dlsys.load(path)
