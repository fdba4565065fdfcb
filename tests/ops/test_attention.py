"""The fused attention operator (``dlsys.ops.attention``): values and gradients against
PyTorch (float64, 1e-6 relative) and finite differences on odd sizes, causal and not,
T != S; the same values as the unfused graph, fused or not; no T x S buffer in its program;
deterministic gradients; named errors; and the choice ``F.scaled_dot_product_attention``
makes between the fused operator and the unfused graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ShapeError
from dlsys.graph import find_topo_sort
from dlsys.nn import functional as F
from dlsys.ops import attention_op, sum_op
from dlsys.ops.attention import FUSED_FROM_LENGTH, AttentionOp, use_fused_attention
from dlsys.passes.pipeline import CompileOptions, compile

RTOL, ATOL = 1e-6, 1e-9
# (T, S, D, E, causal): odd sizes, T != S both ways, blocks with a tail, causal squares.
CASES = [(7, 9, 5, 5, False), (7, 9, 5, 5, True), (9, 7, 3, 4, False), (5, 5, 4, 6, True),
         (37, 45, 8, 8, True), (70, 70, 16, 16, True)]


def _torch_attention(q, k, v, causal):
    t, s = q.shape[-2], k.shape[-2]
    # dlsys's causal mask keeps j <= i + S - T (PyTorch's is_causal for T == S).
    mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t) if causal else None
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _arrays(t, s, d, e, lead=(2, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(*lead, n, m)) for n, m in ((t, d), (s, d), (s, e), (t, e))]


def _graph(causal, scale=None):
    q, k, v, g = (ad.Variable(n) for n in "qkvg")
    out = attention_op(q, k, v, scale, causal)
    return (q, k, v, g), out, ad.gradients(sum_op(out * g), [q, k, v])


@pytest.mark.parametrize("t,s,d,e,causal", CASES)
def test_values_and_gradients_match_torch(t, s, d, e, causal):
    arrays = _arrays(t, s, d, e)
    (q, k, v, g), out, grads = _graph(causal)
    got = ad.Executor([out, *grads], dtype="float64").run(
        dict(zip((q, k, v, g), arrays)), convert_to_numpy_ret_vals=True)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays[:3]]
    expected = _torch_attention(*tensors, causal)
    expected.backward(torch.tensor(arrays[3]))
    wanted = [expected.detach(), *(x.grad for x in tensors)]
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, wanted):
        np.testing.assert_allclose(a, b.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_finite_differences(causal):
    check_gradients(lambda q, k, v: attention_op(q, k, v, 0.7, causal),
                    [(1, 2, 7, 5), (1, 2, 9, 5), (1, 2, 9, 3)])


def test_any_leading_axes_and_an_explicit_scale():
    arrays = [a[0] for a in _arrays(6, 4, 3, 2, lead=(3,))]  # rank 3: (B*H, T, D)
    (q, k, v, g), out, grads = _graph(False, scale=0.3)
    got = ad.Executor([out, *grads], dtype="float64").run(
        dict(zip((q, k, v, g), arrays)), convert_to_numpy_ret_vals=True)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays[:3]]
    expected = torch.nn.functional.scaled_dot_product_attention(*tensors, scale=0.3)
    expected.backward(torch.tensor(arrays[3]))
    for a, b in zip(got, [expected.detach(), *(x.grad for x in tensors)]):
        np.testing.assert_allclose(a, b.numpy(), rtol=RTOL, atol=ATOL)


def _program(outputs, feeds, fuse=True, dtype="float64"):
    return compile(outputs, {n: a.shape for n, a in feeds.items()},
                   CompileOptions(dtype=dtype, fuse=fuse))


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_unfused_graphs_agree(causal, dtype, rtol, monkeypatch):
    arrays = [a.astype(dtype) for a in _arrays(33, 33, 8, 8)]
    results = {}
    for strategy in ("fused", "unfused"):
        monkeypatch.setenv("DLSYS_ATTENTION", strategy)
        q, k, v, g = (ad.Variable(n) for n in "qkvg")
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        fused = any(isinstance(n.op, AttentionOp) for n in find_topo_sort([out]))
        assert fused == (strategy == "fused")
        grads = ad.gradients(sum_op(out * g), [q, k, v])
        results[strategy] = ad.Executor([out, *grads], dtype=dtype).run(
            dict(zip((q, k, v, g), arrays)), convert_to_numpy_ret_vals=True)
    for a, b in zip(results["fused"], results["unfused"]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def test_one_kernel_writes_output_and_lse_another_dk_and_dv():
    arrays = _arrays(7, 9, 5, 5)
    (q, k, v, g), out, grads = _graph(True)
    feeds = dict(zip((q, k, v, g), arrays))
    kernels = [(s.kernel.kind, s.kernel.params[-1]) for s in _program([out, *grads], feeds).steps
               if s.kernel is not None and s.kernel.kind.startswith("attention")]
    assert kernels == [("attention_forward", "both"), ("attention_query_gradient", True),
                       ("attention_key_gradient", "both")]
    # Unfused, each value has its kernel; the values are the same.
    unfused = _program([out, *grads], feeds, fuse=False)
    assert sum(s.kernel is not None and s.kernel.kind.startswith("attention")
               for s in unfused.steps) == 5
    fused, separate = (ad.Executor([out, *grads], dtype="float64", fuse=fuse).run(feeds, True)
                       for fuse in (True, False))
    for a, b in zip(fused, separate):
        np.testing.assert_array_equal(a, b)


def test_no_value_holds_the_scores():
    t = s = 96
    arrays = _arrays(t, s, 4, 4, lead=(1, 1))
    (q, k, v, g), out, grads = _graph(True)
    program = _program([out, *grads], dict(zip((q, k, v, g), arrays)))
    largest = max(int(np.prod(program.shapes[o])) for step in program.steps
                  for o in step.outputs)
    assert largest < t * s, largest
    # Inference reads no log-sum-exp: still one kernel.
    forward = _program([out], dict(zip((q, k, v), arrays[:3])))
    assert [st.kernel.kind for st in forward.steps] == ["attention_forward"]


def test_gradients_are_the_same_at_every_run():
    arrays = [a.astype("float32") for a in _arrays(50, 50, 8, 8)]
    (q, k, v, g), out, grads = _graph(True)
    executor = ad.Executor(grads, dtype="float32")
    first = executor.run(dict(zip((q, k, v, g), arrays)), convert_to_numpy_ret_vals=True)
    again = executor.run(dict(zip((q, k, v, g), arrays)), convert_to_numpy_ret_vals=True)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shapes,text", [
    ([(2, 3, 4, 5), (2, 3, 6, 4), (2, 3, 6, 5)], "same depth"),
    ([(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 7, 5)], "same length"),
    ([(2, 3, 4, 5), (1, 3, 6, 5), (1, 3, 6, 5)], "leading axes"),
    ([(4, 5), (2, 6, 5), (2, 6, 5)], "one rank"),
])
def test_shape_errors_name_the_node_and_shapes(shapes, text):
    q, k, v = (ad.Variable(n) for n in "qkv")
    out = attention_op(q, k, v)
    with pytest.raises(ShapeError, match=text) as err:
        ad.Executor([out]).run({n: np.zeros(s, np.float32) for n, s in zip((q, k, v), shapes)})
    # The log-sum-exp node, an input of the output node, is checked first.
    assert "AttentionLSE(q, k, v)" in str(err.value) and str(shapes[0]) in str(err.value)


def test_the_choice_of_graph(monkeypatch):
    monkeypatch.delenv("DLSYS_ATTENTION", raising=False)
    assert use_fused_attention(False, 0.0)
    assert not use_fused_attention(True, 0.0)       # a mask: the unfused graph
    assert not use_fused_attention(False, 0.1)      # dropout: the unfused graph
    assert not use_fused_attention(False, 0.0, "unfused")
    assert not use_fused_attention(False, 0.0, length=FUSED_FROM_LENGTH - 1)  # measured
    assert use_fused_attention(False, 0.0, length=FUSED_FROM_LENGTH)
    assert use_fused_attention(False, 0.0, "fused", length=16)
    monkeypatch.setenv("DLSYS_ATTENTION", "unfused")
    assert not use_fused_attention(False, 0.0)
    monkeypatch.setenv("DLSYS_ATTENTION", "fused")
    assert not use_fused_attention(True, 0.0)        # forced, but a mask is not supported
    monkeypatch.setenv("DLSYS_ATTENTION", "fast")
    with pytest.raises(ArgumentError, match="DLSYS_ATTENTION"):
        use_fused_attention(False, 0.0)


def test_a_transformer_layer_gets_the_fused_kernels(monkeypatch):
    # MultiheadAttention's backward pass reaches dV before dK: still one kernel for both.
    from dlsys import nn
    monkeypatch.delenv("DLSYS_ATTENTION", raising=False)
    layer = nn.MultiheadAttention(8, 2, batch_first=True)
    x = ad.Variable("x")
    out, _ = layer(x, x, x, is_causal=True, need_weights=False)
    params = list(layer.parameters())
    grads = ad.gradients(sum_op(out), params)
    program = compile([out, *grads], {x: (2, 5, 8), **{p: p.shape for p in params}},
                      CompileOptions())
    kernels = sorted((s.kernel.kind, s.kernel.params[-1]) for s in program.steps
                     if s.kernel is not None and s.kernel.kind.startswith("attention"))
    assert kernels == [("attention_forward", "both"), ("attention_key_gradient", "both"),
                       ("attention_query_gradient", True)]
