"""Fused attention: ``softmax(Q K^T * scale [+ causal mask]) V`` as one operator whose
kernels never hold the T x S matrix of scores (``dlsys.kernels.attention``).

The forward kernel runs an online softmax over blocks of keys and can write, besides the
output, each query's log-sum-exp ``L`` of its scores, which is all the backward pass needs
to recompute the probabilities ``P = exp(Q K^T * scale - L)`` block by block. dlsys gives
each node one value, so ``L`` is a node of its own (``attention_lse_op``) that the output
node carries as an input it does not read (``kernel_inputs``): the two steps then sit side
by side, and fusion (``absorbs``) computes ``L`` in the output's kernel, one pass over the
keys. Unfused (``fuse=False``) each has its own kernel. In an inference graph nothing
reads ``L``: unfused its step is dropped, fused the one kernel still writes it (an array
of (..., T), a 1/E share of the output's size).

The gradients are three nodes with two kernels: dQ loops over key blocks for each block of
queries; dK and dV loop over query blocks for each block of keys, and the dV node carries
the dK node as an unread input so that one kernel writes both. Each kernel's parallel tasks
own the rows they write, so the gradients are deterministic, with no atomics.

The causal mask keeps key ``j`` for query ``i`` where ``j <= i + S - T``, as
``causal_mask_op`` does (PyTorch's ``is_causal`` for T == S). A query that sees no key
(T > S, causal) gets NaN, and so do the gradients it reaches, as in the unfused graph.
"""

from __future__ import annotations

import math
import os

import numpy as np

from dlsys.checks import check_constant, check_flag
from dlsys.errors import ArgumentError, GradientError, ShapeError
from dlsys.graph import Node, Op, Shape, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.elementwise import mul_op
from dlsys.ops.reduce import sum_op
from dlsys.ops.shapes import inputs_text


def attention_shapes(node: Node, input_shapes: list[Shape]) -> tuple[Shape, int, int, int,
                                                                     int]:
    """``(lead, T, S, D, E)`` of Q (*lead, T, D), K (*lead, S, D) and V (*lead, S, E)
    (``lead`` is (B, H) in a transformer, any leading axes the three share), or a
    ``ShapeError`` naming the node and its inputs' shapes."""
    q, k, v = (tuple(s) for s in input_shapes[:3])
    problem = None
    if any(len(s) < 2 for s in (q, k, v)) or not len(q) == len(k) == len(v):
        problem = "query, key and value must be (..., length, depth) of one rank"
    elif q[:-2] != k[:-2] or k[:-1] != v[:-1]:
        problem = ("the leading axes must agree (the fused kernel does not broadcast them: "
                   f"set {STRATEGY_VARIABLE}=unfused for the graph that does), and keys and "
                   "values have the same length")
    elif q[-1] != k[-1]:
        problem = "queries and keys must have the same depth"
    elif 0 in q + k + v:
        problem = "every axis must be positive"
    if problem is not None:
        raise ShapeError(f"{node.name}: {problem}; got {inputs_text(node, input_shapes[:3])}")
    return q[:-2], q[-2], k[-2], q[-1], v[-1]


def _scale(node: Node, depth: int) -> float:
    scale = node.attrs["scale"]
    return 1.0 / math.sqrt(depth) if scale is None else scale


def _params(node: Node, shapes: list[Shape]) -> tuple:
    """The kernels' leading parameters: the three operand shapes, the scale, the mask."""
    depth = attention_shapes(node, shapes)[3]
    return (*(tuple(s) for s in shapes[:3]), _scale(node, depth), node.attrs["causal"])


def _reference_probabilities(node: Node, q, k) -> np.ndarray:
    t, s = q.shape[-2], k.shape[-2]
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * _scale(node, q.shape[-1])
    if node.attrs["causal"]:
        keep = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
        scores = np.where(keep, scores, -np.inf)
    with np.errstate(invalid="ignore"):  # a query that sees no key: NaN, as the graph gives
        shifted = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(shifted)
        return weights / weights.sum(axis=-1, keepdims=True)


class _AttentionNodeOp(Op):
    """What the attention operators share: attributes ``scale`` (None: ``1/sqrt(D)``) and
    ``causal``, the first three inputs Q, K, V, and no second derivative."""

    def describe(self, node):
        causal = ", causal" if node.attrs["causal"] else ""
        return f"{self.name}({', '.join(short_name(i) for i in node.inputs[:3])}{causal})"

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: fused attention has no second derivative in dlsys")

    def flops(self, node, input_shapes, output_shape):
        # The scores Q K^T and the product with V, a multiply-add each: what dominates every
        # attention kernel (the gradient's kernel does about twice as much; same order).
        lead, t, s, d, e = attention_shapes(node, input_shapes)
        return 2 * math.prod(lead) * t * s * (d + e)


class AttentionLSEOp(_AttentionNodeOp):
    """``L = logsumexp(Q K^T * scale [+ causal mask])`` per query, shape (B, H, T): the
    statistic the backward kernels recompute the probabilities from. Its own kernel runs
    the forward loops writing only ``L``; fused, the output's kernel writes it."""

    name = "AttentionLSE"

    def __call__(self, q: Node, k: Node, v: Node, scale: float | None, causal: bool) -> Node:
        return Node(self, [q, k, v], {"scale": scale, "causal": causal})

    def infer_shape(self, node, input_shapes):
        lead, queries, *_ = attention_shapes(node, input_shapes)
        return (*lead, queries)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("attention_forward", (*_params(node, input_shapes), "lse"))

    def reference(self, node, q, k, v=None):
        t, s = q.shape[-2], k.shape[-2]
        scores = np.matmul(q, np.swapaxes(k, -1, -2)) * _scale(node, q.shape[-1])
        if node.attrs["causal"]:
            keep = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
            scores = np.where(keep, scores, -np.inf)
        top = scores.max(axis=-1)
        with np.errstate(invalid="ignore"):
            return top + np.log(np.exp(scores - top[..., None]).sum(axis=-1))


class AttentionOp(_AttentionNodeOp):
    """``softmax(Q K^T * scale [+ causal mask]) V`` for Q (B, H, T, D), K (B, H, S, D),
    V (B, H, S, E): shape (B, H, T, E) (any leading axes the three share, in place of
    (B, H)). Input 3 is its ``AttentionLSE`` sibling, not read
    (see the module docstring)."""

    name = "Attention"
    absorbs = None  # set below: the log-sum-exp its kernel writes too

    def __call__(self, q: Node, k: Node, v: Node, scale: float | None = None,
                 causal: bool = False) -> Node:
        for argument, value in (("q", q), ("k", k), ("v", v)):
            check_node(self.name, argument, value)
        if scale is not None:
            scale = check_constant(f"{self.name}: scale", scale)
        causal = check_flag(f"{self.name}: causal", causal)
        lse = attention_lse_op(q, k, v, scale, causal)
        return Node(self, [q, k, v, lse], {"scale": scale, "causal": causal})

    def kernel_inputs(self, node):
        return node.inputs[:3]

    def infer_shape(self, node, input_shapes):
        lead, queries, _, _, value_depth = attention_shapes(node, input_shapes)
        return (*lead, queries, value_depth)

    def gradient(self, node, output_grad):
        q, k, v, lse = node.inputs
        # rowsum(dO * O), the softmax adjoint's correction, once for both kernels.
        delta = sum_op(mul_op(output_grad, node), axes=-1)
        operands = (q, k, v, output_grad, lse, delta, node.attrs["scale"],
                    node.attrs["causal"])
        dk = attention_key_gradient_op(*operands)
        return [attention_query_gradient_op(*operands), dk,
                attention_value_gradient_op(*operands, dk), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("attention_forward", (*_params(node, input_shapes), "output"))

    def absorb_kernel_spec(self, node, other, shapes, spec):
        if other is not node.inputs[3]:
            return None
        return KernelSpec("attention_forward",
                          (*_params(node, [shapes[i] for i in node.inputs]), "both"))

    def reference(self, node, q, k, v, lse=None):
        return np.matmul(_reference_probabilities(node, q, k), v)


class AttentionGradientOp(_AttentionNodeOp):
    """One adjoint of ``AttentionOp`` (``wrt``: "query", "key" or "value") from Q, K, V, the
    output's gradient dO, the log-sum-exp L and ``delta = rowsum(dO * O)`` (..., T),
    recomputing the probabilities.

    The value gradient may carry the key gradient as a seventh input it does not read, so
    that fusion computes both in one kernel (``absorbs``). It is that way round because a
    transformer's backward pass reaches dV first (its projection was made last): dK's step
    then sits right before dV's, with no reader of dK between, as absorbing needs."""

    name = "AttentionGrad"

    def __init__(self, wrt: str):
        self.wrt = wrt
        self.name = f"Attention{wrt.capitalize()}Grad"

    def __call__(self, q: Node, k: Node, v: Node, d_out: Node, lse: Node, delta: Node,
                 scale: float | None, causal: bool, sibling: Node | None = None) -> Node:
        inputs = [q, k, v, d_out, lse, delta] + ([] if sibling is None else [sibling])
        return Node(self, inputs, {"scale": scale, "causal": causal})

    def kernel_inputs(self, node):
        return node.inputs[:6]

    def infer_shape(self, node, input_shapes):
        lead, t, _, _, e = attention_shapes(node, input_shapes)
        for position, expected in ((3, (*lead, t, e)), (4, (*lead, t)), (5, (*lead, t))):
            if tuple(input_shapes[position]) != expected:
                raise ShapeError(f"{node.name}: {node.inputs[position].name} must have shape "
                                 f"{expected}, got {tuple(input_shapes[position])}")
        return tuple(input_shapes[{"query": 0, "key": 1, "value": 2}[self.wrt]])

    def kernel_spec(self, node, input_shapes, output_shape):
        params = _params(node, input_shapes)
        if self.wrt == "query":
            return KernelSpec("attention_query_gradient", params)
        return KernelSpec("attention_key_gradient", (*params, self.wrt))

    def absorb_kernel_spec(self, node, other, shapes, spec):
        if len(node.inputs) < 7 or other is not node.inputs[6]:
            return None
        return KernelSpec("attention_key_gradient",
                          (*_params(node, [shapes[i] for i in node.inputs]), "both"))

    def reference(self, node, q, k, v, d_out, lse, delta, sibling=None):
        p = _reference_probabilities(node, q, k)
        scale = _scale(node, q.shape[-1])
        if self.wrt == "value":
            return np.matmul(np.swapaxes(p, -1, -2), d_out)
        ds = p * (np.matmul(d_out, np.swapaxes(v, -1, -2)) - delta[..., None])
        if self.wrt == "query":
            return np.matmul(ds, k) * scale
        return np.matmul(np.swapaxes(ds, -1, -2), q) * scale


attention_lse_op = AttentionLSEOp()
attention_op = AttentionOp()
attention_op.absorbs = attention_lse_op
attention_query_gradient_op = AttentionGradientOp("query")
attention_key_gradient_op = AttentionGradientOp("key")
attention_value_gradient_op = AttentionGradientOp("value")
attention_value_gradient_op.absorbs = attention_key_gradient_op


# ------------------------------------------------------------------------------ the choice
STRATEGY_VARIABLE = "DLSYS_ATTENTION"
STRATEGIES = ("auto", "fused", "unfused")


def attention_strategy(strategy: str | None = None) -> str:
    """``strategy``, or else the environment variable DLSYS_ATTENTION, or ``"auto"``:
    ``"fused"`` or ``"unfused"`` force that graph where the fused operator supports the
    call; ``"auto"`` applies ``use_fused_attention``'s measured rule."""
    chosen = strategy if strategy is not None else os.environ.get(STRATEGY_VARIABLE, "")
    chosen = chosen.strip().lower() or "auto"
    if chosen not in STRATEGIES:
        raise ArgumentError(f"{STRATEGY_VARIABLE} must be one of {STRATEGIES}, got {chosen!r}")
    return chosen


# The length from which the fused operator's forward and backward beat the unfused graph's
# (measured, see ``use_fused_attention``); below it the unfused graph's tuned batched
# matmuls, which need not recompute the probabilities, win the backward pass.
FUSED_FROM_LENGTH = 128


def use_fused_attention(has_mask: bool, dropout_p: float, strategy: str | None = None,
                        length: int | None = None) -> bool:
    """Whether ``F.scaled_dot_product_attention`` builds ``attention_op`` (True) or the
    unfused graph of matmuls, mask and softmax (False).

    The fused operator takes no ``attn_mask`` and no dropout: such calls are always
    unfused. ``"fused"`` and ``"unfused"`` (``strategy`` or DLSYS_ATTENTION) force the
    choice otherwise. ``"auto"`` chooses from ``benchmarks/bench_attention.py``'s figures
    (AMD EPYC znver4, one thread, float32, B=8, H=4, D=32, T = S, causal; kernel times):

    - forward only, the fused operator was faster at every length, 16 to 512 (1.2-1.3x at
      T <= 64, 3-6x from T = 128, where the unfused graph writes the (B, H, T, T) scores
      and their softmax, 8 MiB each at T = 512, and reads them back);
    - forward and backward, the unfused graph was faster below T = 128 (0.66-0.88x of the
      fused time at T = 16-64, under 0.2 ms apart), even at T = 128 (2.8 against 2.9 ms
      of kernels), and slower from T = 256 (1.5x at 256, 1.85x at 512).

    The graph is built before the lengths are known (placeholders get their shapes when
    fed), so ``"auto"`` takes the fused operator unless the caller passes the key
    ``length`` and it is under ``FUSED_FROM_LENGTH``: it loses at most a fraction of a
    millisecond on short sequences, and wins, and saves the T x S buffers, on long ones.
    """
    if has_mask or dropout_p > 0:
        return False
    chosen = attention_strategy(strategy)
    if chosen != "auto":
        return chosen == "fused"
    return length is None or length >= FUSED_FROM_LENGTH


__all__ = ["AttentionOp", "AttentionLSEOp", "AttentionGradientOp", "attention_op",
           "attention_lse_op", "attention_query_gradient_op", "attention_key_gradient_op",
           "attention_value_gradient_op", "attention_shapes", "attention_strategy",
           "use_fused_attention", "STRATEGY_VARIABLE", "FUSED_FROM_LENGTH"]
