"""Converters of ONNX's attention operators (opset 23 Attention, RotaryEmbedding), built on
dlsys's matmul, softmax and masking ops.

Attention is composed of graph nodes that each have a gradient (matmul, softmax, where,
the masks' additions), so an imported model fine-tunes through it; where the node is plain
scaled dot-product attention (no mask but a causal one that ``attention_op`` computes the
same way, no soft cap, no debug output) it becomes dlsys's fused operator instead, by
``use_fused_attention``'s rule.

The masks ONNX composes (``is_causal``, a sliding window, a key length per batch
``nonpad_kv_seqlen``, the padding of a short ``attn_mask``) depend only on sizes the graph
knows when it is built, or on the per-batch length, so each is a table computed here in
numpy: a (T, S) additive bias of 0 and ``-inf``, or one such bias per length, picked per
batch row by an embedding lookup of the fed lengths (integer ids, as dlsys reads them). A
query whose every key is masked gets a zero row, as ONNX specifies, not the NaN a softmax
of ``-inf`` alone gives.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter, show_dims
from dlsys.ops import matmul_op, mul_byconst_op, tanh_op, zeroslike_op
from dlsys.ops.activations import is_inf_op, logical_not_op, where_op
from dlsys.ops.attention import attention_op, use_fused_attention
from dlsys.ops.concat import concat_op
from dlsys.ops.embedding import embedding_op
from dlsys.ops.layout import transpose_op
from dlsys.ops.pad import pad_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reduce import broadcastto_op, sum_op
from dlsys.ops.reshape import reshape_op
from dlsys.ops.slicing import slice_op
from dlsys.ops.softmax import softmax_op
from dlsys.ops.tile import expand_to_op

# ``softmax_precision`` values: FLOAT, FLOAT16, DOUBLE, BFLOAT16. dlsys computes the softmax
# in the model's floating-point type (float32 at least, as precise as FLOAT16 and BFLOAT16
# ask); a DOUBLE softmax of float32 scores rounds back to what float32's gives, but for the
# last bit.
_PRECISIONS = (1, 10, 11, 16)
_QK_MODES = (0, 1, 2, 3)


def _constant(ctx: Context, array: np.ndarray, what: str) -> Node:
    """A table the converter computed (a mask) as a graph value the model does not train."""
    dtype = getattr(ctx, "compute_dtype", "float32")
    return Parameter(np.ascontiguousarray(array, dtype), f"{ctx.node.output[0]}:{what}")


def _known(ctx: Context, dims, axes: tuple[int, ...], what: str) -> None:
    if dims is None or any(dims[a] is None for a in axes):
        raise ctx.refuse(f"{what} has shape {show_dims(dims)}; dlsys needs its sizes other "
                         f"than the batch when it builds the graph")


def _heads_first(ctx: Context, x: Node, dims, heads: int | None, what: str) -> Node:
    """A 3-d (B, L, heads * size) input as (B, heads, L, size); a 4-d one as it is."""
    if dims is None or len(dims) not in (3, 4):
        raise ctx.refuse(f"{what} must be 3-d (batch, length, hidden) or 4-d (batch, heads, "
                         f"length, size), got shape {show_dims(dims)}")
    if len(dims) == 4:
        return x
    _known(ctx, dims, (1, 2), what)
    if heads is None or heads < 1 or dims[2] % heads:
        raise ctx.refuse(f"{what} is 3-d with hidden size {dims[2]}: q_num_heads and "
                         f"kv_num_heads must be given and divide it, got {heads}")
    split = reshape_op(x, (-1, dims[1], heads, dims[2] // heads))
    return transpose_op(split, (0, 2, 1, 3))


def _four_d(dims, heads: int | None) -> tuple:
    """``dims`` of a 3-d or 4-d input as (B, heads, L, size)."""
    if len(dims) == 4:
        return tuple(dims)
    return (dims[0], heads, dims[1], dims[2] // heads)


def _allowed(t: int, s: int, offset, causal: bool, left: int, right: int) -> np.ndarray:
    """Which keys each query sees, (T, S) booleans (or (..., T, S) for an array ``offset``):
    query ``i`` sits at absolute position ``i + offset``; causal keeps keys up to it, the
    window those within ``left`` before and ``right`` after it (-1: unbounded)."""
    position = np.arange(t)[:, None] + np.asarray(offset)[..., None, None]
    keys = np.arange(s)
    keep = np.ones(position.shape[:-1] + (s,), dtype=bool)
    if causal:
        keep &= keys <= position
    if left >= 0:
        keep &= keys >= position - left
    if right >= 0:
        keep &= keys <= position + right
    return keep


def _additive(keep: np.ndarray) -> np.ndarray:
    return np.where(keep, 0.0, -np.inf).astype(np.float32)


def _runtime_mask(ctx: Context, mask: Node, keys: int) -> Node:
    """``attn_mask`` as an additive bias: a bool one (fed as 0.0 and 1.0) as 0 and ``-inf``,
    a float one as it is; one shorter than the keys padded with masked keys."""
    dims = ctx.input_dims(3, mask)
    if dims is None or not 1 <= len(dims) <= 4 or dims[-1] is None or dims[-1] > keys:
        raise ctx.refuse(f"attn_mask has shape {show_dims(dims)}; it must have 1 to 4 axes "
                         f"broadcasting to the scores (batch, heads, {ctx.output_dims(0)}, "
                         f"{keys}) with at most {keys} keys")
    short = keys - dims[-1]
    if short:  # the missing keys: 0 here, masked by the constant bias (see _constant_bias)
        mask = pad_op(mask, [(0, 0)] * (len(dims) - 1) + [(0, short)])
    if _is_bool(ctx, 3, mask):
        zero = _constant(ctx, np.zeros(1), "zero")
        masked = _constant(ctx, np.full(1, -np.inf), "masked")
        return where_op(mask, zero, masked)
    return mask


def _is_bool(ctx: Context, i: int, value) -> bool:
    """Whether the node's input ``i`` is declared bool (a mask dlsys holds as 0.0 and 1.0),
    as the file or ONNX's type inference tells it."""
    dtype = ctx.input_dtype(i, value) if hasattr(ctx, "input_dtype") else None
    return dtype is not None and np.dtype(dtype) == np.bool_


def _mask_short(ctx: Context, mask, keys: int) -> int:
    dims = ctx.input_dims(3, mask) if mask is not None else None
    return 0 if not dims or dims[-1] is None else max(keys - dims[-1], 0)


def _attention_attrs(ctx: Context):
    causal = bool(ctx.attr("is_causal", 0))
    left, right = int(ctx.attr("left_window_size", -1)), int(ctx.attr("right_window_size", -1))
    if left < -1 or right < -1:
        raise ctx.refuse(f"left_window_size {left} and right_window_size {right} must be -1 "
                         f"or at least 0")
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    if mode not in _QK_MODES:
        raise ctx.refuse(f"qk_matmul_output_mode {mode} is not one of {_QK_MODES}")
    precision = ctx.attr("softmax_precision")
    if precision is not None and int(precision) not in _PRECISIONS:
        raise ctx.refuse(f"softmax_precision {precision} is not one of ONNX's {_PRECISIONS}")
    softcap = float(ctx.attr("softcap", 0.0))
    if softcap < 0:
        raise ctx.refuse(f"softcap must be 0 (none) or positive, got {softcap}")
    return causal, left, right, mode, softcap


@converter("Attention", attrs=("is_causal", "kv_num_heads", "q_num_heads",
                               "qk_matmul_output_mode", "scale", "softcap",
                               "softmax_precision", "left_window_size", "right_window_size"))
def attention(ctx, q, k, v, attn_mask=None, past_key=None, past_value=None,
              nonpad_kv_seqlen=None):
    """``softmax(Q K^T * scale [soft-capped] + bias) V`` per head, with the key/value cache,
    group-query heads and the optional outputs of ONNX's Attention (see the module
    docstring for the masks)."""
    causal, left, right, mode, softcap = _attention_attrs(ctx)
    dims = [ctx.input_dims(i, x) for i, x in enumerate((q, k, v))]
    if any(d is None for d in dims) or len({len(d) for d in dims}) != 1:
        raise ctx.refuse(f"Q, K and V must have one rank, 3 or 4, got shapes "
                         f"{', '.join(show_dims(d) for d in dims)}")
    q_heads, kv_heads = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    rank = len(dims[0])
    q = _heads_first(ctx, ctx.node_input(0, q), dims[0], q_heads, "Q")
    k = _heads_first(ctx, ctx.node_input(1, k), dims[1], kv_heads, "K")
    v = _heads_first(ctx, ctx.node_input(2, v), dims[2], kv_heads, "V")
    qd, kd, vd = (_four_d(d, h) for d, h in zip(dims, (q_heads, kv_heads, kv_heads)))
    _known(ctx, qd, (1, 2, 3), "Q")
    _known(ctx, kd, (1, 2, 3), "K")
    _known(ctx, vd, (1, 2, 3), "V")
    if qd[3] != kd[3] or kd[1:3] != vd[1:3] or qd[1] % kd[1]:
        raise ctx.refuse(f"Q {show_dims(qd)}, K {show_dims(kd)}, V {show_dims(vd)} (batch, "
                         f"heads, length, size) do not fit: Q and K need one head size, K "
                         f"and V one length and head count, dividing Q's head count")
    if (past_key is None) != (past_value is None):
        raise ctx.refuse("past_key and past_value must be given together")
    if past_key is not None and nonpad_kv_seqlen is not None:
        raise ctx.refuse("nonpad_kv_seqlen cannot be combined with past_key and past_value")
    present_key, present_value, past = k, v, 0
    if past_key is not None:
        past_dims = ctx.input_dims(4, past_key)
        _known(ctx, past_dims, (1, 2, 3), "past_key")
        past = past_dims[2]
        present_key = concat_op([ctx.node_input(4, past_key), k], axis=2)
        present_value = concat_op([ctx.node_input(5, past_value), v], axis=2)
    queries, keys = qd[2], kd[2] + past
    scale = ctx.attr("scale")
    scale = 1.0 / math.sqrt(qd[3]) if scale is None else float(scale)

    k, v = present_key, present_value
    if qd[1] != kd[1]:  # group-query attention: each key/value head serves `repeat` heads
        repeat = qd[1] // kd[1]
        k = _repeat_heads(k, kd[1], repeat, keys, kd[3])
        v = _repeat_heads(v, kd[1], repeat, keys, vd[3])

    plain = attn_mask is None and nonpad_kv_seqlen is None and left < 0 and right < 0 \
        and softcap == 0 and mode == 0 and not any(ctx.node.output[3:]) \
        and (not causal or past == keys - queries)
    if plain and use_fused_attention(False, 0.0, length=keys):
        y = attention_op(q, k, v, scale, causal)
        qk = None
    else:
        y, qk = _composed(ctx, q, k, v, attn_mask, nonpad_kv_seqlen, scale, queries, keys,
                          past, causal, left, right, mode, softcap)
    if rank == 3:
        y = reshape_op(transpose_op(y, (0, 2, 1, 3)), (-1, queries, qd[1] * vd[3]))
    return y, present_key, present_value, qk


def _repeat_heads(x: Node, heads: int, repeat: int, length: int, size: int) -> Node:
    """(B, heads, L, size) as (B, heads * repeat, L, size), each head repeated in place."""
    spread = expand_to_op(reshape_op(x, (-1, heads, 1, length, size)), (1, 1, repeat, 1, 1))
    return reshape_op(spread, (-1, heads * repeat, length, size))


def _composed(ctx: Context, q, k, v, attn_mask, nonpad, scale: float, queries: int,
              keys: int, past: int, causal: bool, left: int, right: int, mode: int,
              softcap: float):
    """The attention graph, node by node; returns Y and the ``qk_matmul_output`` asked for
    (None if the graph does not read it)."""
    scores = mul_byconst_op(matmul_op(q, k, False, True), scale)
    outputs = {0: scores}
    if softcap > 0:
        scores = mul_byconst_op(tanh_op(mul_byconst_op(scores, 1.0 / softcap)), softcap)
    outputs[1] = scores

    pieces, runtime = [], False
    short = _mask_short(ctx, attn_mask, keys)
    if nonpad is None:
        keep = _allowed(queries, keys, past, causal, left, right)
        keep[:, keys - short:] = False
        if not keep.all():
            pieces.append(_constant(ctx, _additive(keep), "mask"))
        fully_masked = ~keep.any(axis=-1)
    else:
        if not isinstance(nonpad, Node):
            raise ctx.refuse("nonpad_kv_seqlen must be fed at run time as integer ids")
        # One bias per valid length n in [0, keys]: the keys from n on are padding, and the
        # queries' positions start at n - T (ONNX's bottom-right alignment).
        lengths = np.arange(keys + 1)
        keep = _allowed(queries, keys, lengths - queries, causal, left, right)
        keep &= np.arange(keys) < lengths[:, None, None]
        keep[..., keys - short:] = False
        table = _constant(ctx, _additive(keep).reshape(keys + 1, queries * keys), "lengths")
        pieces.append(reshape_op(embedding_op(table, nonpad), (-1, 1, queries, keys)))
        runtime, fully_masked = True, None
    if attn_mask is not None:
        pieces.append(_runtime_mask(ctx, ctx.node_input(3, attn_mask), keys))
        runtime = True

    if pieces:
        bias = pieces[0]
        for piece in pieces[1:]:
            bias = bias + piece
        scores = scores + broadcastto_op(bias, scores)
    outputs[2] = scores
    weights = softmax_op(scores, axis=-1)
    if runtime:
        # A row of the bias all -inf: no key to attend, a zero row (its softmax is NaN).
        # Counted rather than found by a max, which stops at the lowest finite float.
        attended = logical_not_op(is_inf_op(bias, positive=False))
        empty = logical_not_op(sum_op(attended, axes=-1, keepdims=True))
        weights = where_op(broadcastto_op(empty, weights), zeroslike_op(weights), weights)
    elif fully_masked.any():
        keep_rows = _constant(ctx, (~fully_masked)[:, None].astype(np.float32), "rows")
        weights = where_op(keep_rows, weights, zeroslike_op(weights))
    outputs[3] = weights
    y = matmul_op(weights, v)
    wanted = len(ctx.node.output) > 3 and ctx.node.output[3]
    return y, (outputs[mode] if wanted else None)


# ------------------------------------------------------------ rotary position embedding
@converter("RotaryEmbedding", attrs=("interleaved", "num_heads", "rotary_embedding_dim"))
def rotary_embedding(ctx, x, cos_cache, sin_cache, position_ids=None):
    """Rotate the first ``rotary_embedding_dim`` features of each head (all by default) by
    the angles whose cosines and sines the caches hold: pairs ``(x1, x2)`` (the two halves,
    or with ``interleaved`` the even and odd features) become ``(cos x1 - sin x2,
    sin x1 + cos x2)``. The caches are (positions, R/2) tables picked by ``position_ids``
    (an embedding lookup), or (B, S, R/2) already per token."""
    dims = ctx.input_dims(0, x)
    if dims is None or len(dims) not in (3, 4):
        raise ctx.refuse(f"the input must be 3-d (batch, length, hidden) or 4-d (batch, "
                         f"heads, length, size), got shape {show_dims(dims)}")
    _known(ctx, dims, tuple(range(1, len(dims))), "the input")
    x = ctx.node_input(0, x)
    heads = ctx.attr("num_heads")
    if len(dims) == 3:
        if not heads or dims[2] % int(heads):
            raise ctx.refuse(f"a 3-d input of hidden size {dims[2]} needs num_heads dividing "
                             f"it, got {heads}")
        length, size = dims[1], dims[2] // int(heads)
        x = reshape_op(x, (-1, length, int(heads), size))  # (B, S, H, size)
        angle_shape = (-1, length, 1)
    else:
        length, size = dims[2], dims[3]
        angle_shape = (-1, 1, length)
    rotated = int(ctx.attr("rotary_embedding_dim", 0)) or size
    if rotated % 2 or rotated > size:
        raise ctx.refuse(f"rotary_embedding_dim {rotated} must be even and at most the head "
                         f"size {size}")
    half = rotated // 2
    cos, sin = (_angles(ctx, i, cache, position_ids, half, angle_shape)
                for i, cache in ((1, cos_cache), (2, sin_cache)))
    if ctx.attr("interleaved", 0):
        x1, x2 = slice_op(x, -1, 0, rotated, 2), slice_op(x, -1, 1, rotated, 2)
    else:
        x1, x2 = slice_op(x, -1, 0, half), slice_op(x, -1, half, rotated)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if ctx.attr("interleaved", 0):
        pairs = [reshape_op(part, (-1, *_lead(dims, length, heads, size), half, 1))
                 for part in (real, imag)]
        parts = [reshape_op(concat_op(pairs, axis=-1),
                            (-1, *_lead(dims, length, heads, size), rotated))]
    else:
        parts = [real, imag]
    if rotated < size:
        parts.append(slice_op(x, -1, rotated, size))
    y = concat_op(parts, axis=-1)
    return reshape_op(y, (-1, length, dims[2])) if len(dims) == 3 else y


def _lead(dims, length: int, heads, size: int) -> tuple[int, int]:
    """The two axes after the batch of the rotated layout: (S, H) for a 3-d input, else
    (H, S)."""
    return (length, int(heads)) if len(dims) == 3 else (dims[1], length)


def _angles(ctx: Context, i: int, cache, position_ids, half: int, shape: tuple) -> Node:
    """One cache's values per token, shaped to broadcast against the rotated features."""
    dims = ctx.input_dims(i, cache)
    if dims is None or dims[-1] != half or len(dims) != (2 if position_ids is not None
                                                         else 3):
        raise ctx.refuse(f"{ctx.node.input[i]!r} has shape {show_dims(dims)}; it must be "
                         f"(positions, {half}) with position_ids, else (batch, length, "
                         f"{half})")
    if isinstance(cache, np.ndarray):
        cache = _constant(ctx, cache, ctx.node.input[i])
    cache = ctx.node_input(i, cache)
    if position_ids is not None:
        if not isinstance(position_ids, Node):
            raise ctx.refuse("position_ids must be fed at run time as integer ids")
        cache = embedding_op(cache, position_ids)
    return reshape_op(cache, (*shape, half))


__all__ = ["attention", "rotary_embedding"]
