"""Losses, activations and attention as functions of graph nodes, with PyTorch's names and
arguments (``torch.nn.functional``), so that code moves between the two.

The transformer's functions (``softmax``, ``layer_norm``, ``gelu``, ``embedding``,
``scaled_dot_product_attention``) build graph operators; ``scaled_dot_product_attention`` is
the unfused graph (matmul, scale, masks, softmax, dropout, matmul), whose every step has its
gradient as a graph node.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.checks import check_constant, check_flag
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node
from dlsys.kernels.random import SEED_PERIOD
from dlsys.nn import init
from dlsys.ops import (
    broadcastto_op,
    causal_mask_op,
    embedding_op,
    exp_op,
    gelu_op,
    layernorm_op,
    log_op,
    logsoftmax_op,
    matmul_op,
    mean_op,
    mul_byconst_op,
    oneslike_op,
    relu_op,
    sigmoid_op,
    softmax_op,
    sum_op,
    tanh_op,
)
from dlsys.ops.arguments import check_node
from dlsys.ops.attention import attention_op, use_fused_attention
from dlsys.ops.cross_entropy import cross_entropy as _cross_entropy
from dlsys.ops.placeholder import Parameter
from dlsys.ops.random import dropout_op, next_seed_op

__all__ = ["cross_entropy", "mse_loss", "relu", "sigmoid", "tanh", "gelu", "softmax",
           "log_softmax", "layer_norm", "embedding", "linear", "dropout",
           "scaled_dot_product_attention", "attention_mask"]

GELU_APPROXIMATIONS = ("none", "tanh")


def cross_entropy(logits: Node, target: Node, ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> Node:
    """PyTorch's ``F.cross_entropy`` for logits (batch, classes): the mean over the rows
    that count of ``-sum(w * log_softmax(logits))``, shape ``(1,)``.

    ``target``: class indices of shape ``(batch,)``, fed as integers (kept in their type and
    checked to lie in ``[0, classes)`` or equal ``ignore_index``, whose rows add nothing and
    are not counted) or as whole numbers in floats (a bad one makes the loss NaN); or
    probability rows (one-hot, say) of the logits' shape. ``label_smoothing`` mixes each
    target row with the uniform one, as PyTorch does. A class weighted 0 adds nothing, even
    where its logit is ``-inf`` (a masked class): the loss and its gradient are finite while
    every target's logit is (PyTorch gives NaN for probability rows there).
    """
    return _cross_entropy(logits, target, ignore_index, label_smoothing)


def mse_loss(prediction: Node, target: Node) -> Node:
    """Mean over every element of ``(prediction - target) ** 2``, shape ``(1,)``."""
    error = prediction - target
    return mean_op(error * error)


def relu(x: Node) -> Node:
    return relu_op(x)


def sigmoid(x: Node) -> Node:
    return sigmoid_op(x)


def tanh(x: Node) -> Node:
    return tanh_op(x)


def check_approximate(where: str, approximate) -> str:
    """GELU's ``approximate``: ``"none"`` (the exact erf form) or ``"tanh"``."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ArgumentError(f"{where}: approximate must be one of {GELU_APPROXIMATIONS}, got "
                            f"{approximate!r}")
    return approximate


def gelu(x: Node, approximate: str = "none") -> Node:
    """``x * Phi(x)``, Phi the standard normal's CDF (``"tanh"``: its tanh approximation)."""
    return gelu_op(x, approximate=check_approximate("gelu", approximate))


def softmax(x: Node, dim: int = -1) -> Node:
    """``exp(x) / sum(exp(x))`` along axis ``dim``."""
    return softmax_op(x, axis=dim)


def log_softmax(x: Node, dim: int = -1) -> Node:
    """``x - log(sum(exp(x)))`` along axis ``dim``, computed without overflow."""
    return logsoftmax_op(x, axis=dim)


def normalized_size(where: str, normalized_shape) -> int:
    """LayerNorm's ``normalized_shape`` (an int or a 1-tuple) as the last axis's size; dlsys
    normalises over the last axis only, so a longer shape is refused here."""
    shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) \
        else (normalized_shape,)
    if len(shape) != 1:
        raise ShapeError(f"{where}: normalized_shape {tuple(shape)} spans {len(shape)} axes; "
                         f"dlsys normalises over the last axis only (an int or a 1-tuple)")
    size = shape[0]
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
        raise ArgumentTypeError(f"{where}: normalized_shape must be an int or a 1-tuple of "
                                f"an int, got {normalized_shape!r}")
    if size <= 0:
        raise ArgumentError(f"{where}: normalized_shape must be positive, got {size}")
    return int(size)


def layer_norm(x: Node, normalized_shape, weight: Node | None = None,
               bias: Node | None = None, eps: float = 1e-5) -> Node:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (variance
    biased, as PyTorch's). A missing ``weight`` or ``bias`` is ones or zeros."""
    size = normalized_size("layer_norm", normalized_shape)
    eps = check_constant("layer_norm: eps", eps)
    if eps <= 0:
        raise ArgumentError(f"layer_norm: eps must be positive, got {eps}")
    if weight is None:
        weight = Parameter(np.ones(size, np.float32), "layer_norm.ones")
    if bias is None:
        bias = Parameter(np.zeros(size, np.float32), "layer_norm.zeros")
    return layernorm_op(x, weight, bias, eps=eps)


def embedding(input: Node, weight: Node) -> Node:  # noqa: A002 - PyTorch's argument name
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer ids ``input``:
    shape ``input.shape + (dim,)``."""
    return embedding_op(weight, input)


def linear(x: Node, weight: Node, bias: Node | None = None) -> Node:
    """``x @ weight.T + bias`` over the last axis of ``x``, ``weight`` (out, in)."""
    y = matmul_op(x, weight, False, True)
    return y if bias is None else y + bias


def dropout(x: Node, p: float = 0.5, training: bool = True) -> Node:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by
    ``1 / (1 - p)`` when ``training``; else ``x``. The mask's seed is a fresh state value
    of this graph that advances in place at every run (``nn.Dropout`` keeps it in the
    model's state instead)."""
    p = check_probability("dropout", "p", p)
    if not check_flag("dropout: training", training) or p == 0:
        return x
    seed = init.generator().integers(0, SEED_PERIOD)
    return dropout_op(x, next_seed_op(Parameter(np.array([seed], np.float32), "dropout.seed")),
                      p)


def check_probability(where: str, name: str, p) -> float:
    """A dropout probability ``p`` in [0, 1]; ``where`` and ``name`` name it in the error."""
    p = check_constant(f"{where}: {name}", p)
    if not 0 <= p <= 1:
        raise ArgumentError(f"{where}: {name} must be in [0, 1], got {p!r}")
    return p


def attention_mask(mask, where: str, masked_when_true: bool = False) -> Node | None:
    """An attention mask as a graph node to add to the scores, or None.

    A numpy (or array-like) mask becomes a constant of this graph: a float mask as it is,
    a boolean one as 0 where a query may attend and ``-inf`` where it may not. ``True``
    means "may attend" (``scaled_dot_product_attention``'s convention) unless
    ``masked_when_true`` (``MultiheadAttention``'s). A graph node is fed every run, so it is
    taken as the additive float mask (feed 0 and ``-inf``). Masks of more than four axes are
    refused here; the rest of the check, that it broadcasts to the scores (B, H, T, S), is
    made by shape inference, before any kernel runs.
    """
    if mask is None or isinstance(mask, Node):
        return mask
    array = additive_mask(mask, where, masked_when_true)
    return Parameter(array, "attn_mask")


def additive_mask(mask, where: str, masked_when_true: bool = False) -> np.ndarray:
    """A boolean or float array-like mask as the float array added to the scores."""
    array = np.asarray(mask.numpy() if hasattr(mask, "numpy") else mask)
    if array.ndim == 0 or array.ndim > 4:
        raise ShapeError(f"{where}: attn_mask must broadcast to the scores (B, H, T, S), got "
                         f"shape {array.shape}")
    if array.dtype == np.bool_:
        allowed = ~array if masked_when_true else array
        return np.where(allowed, 0.0, -np.inf).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise ArgumentTypeError(f"{where}: attn_mask must be boolean or float, got "
                                f"{array.dtype}")
    return array


def scaled_dot_product_attention(query: Node, key: Node, value: Node, attn_mask=None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None) -> Node:
    """``softmax(query @ key.T * scale + mask) @ value`` on (B, H, T, D) queries and
    (B, H, S, D) keys and values, as PyTorch's.

    ``attn_mask``: a boolean array (True: may attend), a float array added to the scores,
    or a graph node fed such floats; it must broadcast to (B, H, T, S). ``is_causal``: query
    ``i`` attends to keys ``j <= i + S - T``, the last query to every key (new queries after
    a cache of keys); PyTorch aligns the first instead (``j <= i``), the same when T == S.
    Unlike PyTorch, which refuses the pair, a mask and ``is_causal`` together apply both.
    ``scale`` defaults to ``1 / sqrt(D)``.
    ``dropout_p``: dropout on the attention weights (always applied when positive, as
    PyTorch's function does; modules pass 0 in eval mode).
    """
    where = "scaled_dot_product_attention"
    for name, node in (("query", query), ("key", key), ("value", value)):
        check_node(where, name, node)
    mask = attention_mask(attn_mask, where)
    if scale is not None:
        scale = check_constant(f"{where}: scale", scale)
    return attention(query, key, value, mask, check_flag(f"{where}: is_causal", is_causal),
                     check_probability(where, "dropout_p", dropout_p), scale)


def attention(query: Node, key: Node, value: Node, mask: Node | None, is_causal: bool,
              dropout_p: float, scale: float | None) -> Node:
    """Attention on checked arguments (see :func:`scaled_dot_product_attention`); ``mask``
    an additive node or None. The fused operator (``ops.attention``, no T x S buffer) where
    ``use_fused_attention`` chooses it (DLSYS_ATTENTION forces either), else the unfused
    graph."""
    if use_fused_attention(mask is not None, dropout_p):
        return attention_op(query, key, value, scale, is_causal)
    return unfused_attention(query, key, value, mask, is_causal, dropout_p, scale)


def unfused_attention(query: Node, key: Node, value: Node, mask: Node | None,
                      is_causal: bool, dropout_p: float, scale: float | None) -> Node:
    """The unfused attention graph: matmul, scale, masks, softmax, dropout, matmul."""
    scores = matmul_op(query, key, False, True)
    scores = scores * inverse_sqrt_last_axis(query) if scale is None \
        else mul_byconst_op(scores, scale)
    if mask is not None:
        # Broadcast *to* the scores: a mask of more or larger axes would otherwise widen
        # them silently; shape inference names the mask where it does not fit.
        scores = scores + broadcastto_op(mask, scores)
    if is_causal:
        scores = causal_mask_op(scores)
    weights = softmax_op(scores, axis=-1)
    if dropout_p > 0:
        weights = dropout(weights, dropout_p)
    return matmul_op(weights, value)


def inverse_sqrt_last_axis(x: Node) -> Node:
    """``1 / sqrt(D)`` for ``x`` of shape (..., D), shape (..., 1). A placeholder's D is
    known only when it is fed, so the graph counts it: a row of ones summed, then
    ``exp(-log(D) / 2)``. Pass ``scale=`` to spare these small kernels."""
    count = sum_op(oneslike_op(x), axes=-1, keepdims=True)
    return exp_op(mul_byconst_op(log_op(count), -0.5))


def default_scale(head_dim: int) -> float:
    """``1 / sqrt(head_dim)``, the scale where the head size is known when building."""
    return 1.0 / math.sqrt(head_dim)
