"""Transformer modules: ``MultiheadAttention`` and ``TransformerEncoderLayer``, with
PyTorch's constructor arguments, parameter names, shapes and default initialisation, so a
state dict moves between the two through numpy.

Sequences are (B, T, E) with ``batch_first``, else (T, B, E), PyTorch's default. Masks
follow ``nn.MultiheadAttention``: a boolean ``attn_mask`` or ``key_padding_mask`` is True
where a query may *not* attend (the opposite of ``F.scaled_dot_product_attention``), a float
one is added to the scores. ``is_causal=True`` applies the causal mask by itself; PyTorch
reads it only as a hint about a mask that must be given too. With both, dlsys applies both,
which is PyTorch's result whenever its hint is true (the given mask is causal).
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.checks import check_constant, check_flag
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node
from dlsys.nn import functional as F
from dlsys.nn import init
from dlsys.nn.layers import Dropout, LayerNorm, Linear, check_size
from dlsys.nn.module import Module
from dlsys.ops import reshape_op, slice_op, transpose_op
from dlsys.ops.arguments import check_node
from dlsys.ops.placeholder import Parameter

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _check_inputs(where: str, **nodes) -> None:
    for name, node in nodes.items():
        check_node(where, name, node)


class MultiheadAttention(Module):
    """Attention of ``num_heads`` heads over ``embed_dim`` features, as PyTorch's.

    ``in_proj_weight`` (3E, E) stacks the query, key and value projections (xavier-uniform
    at first), ``in_proj_bias`` (3E) their biases (zeros); ``out_proj`` is a ``Linear(E, E)``
    whose bias starts at zero. ``dropout`` drops attention weights in training mode.
    """

    # Its config rebuilds ``out_proj`` (dlsys.nn.serialization saves the config alone).
    builds_children = True

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False):
        super().__init__()
        self.embed_dim = check_size("MultiheadAttention", "embed_dim", embed_dim)
        self.num_heads = check_size("MultiheadAttention", "num_heads", num_heads)
        if self.embed_dim % self.num_heads:
            raise ShapeError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout = F.check_probability("MultiheadAttention", "dropout", dropout)
        self.batch_first = check_flag("batch_first", batch_first)
        e = self.embed_dim
        # xavier_uniform over (3E, E): fan_in E, fan_out 3E.
        self.in_proj_weight = Parameter(init.uniform((3 * e, e), math.sqrt(6.0 / (4 * e))),
                                        "in_proj_weight")
        has_bias = check_flag("bias", bias)
        self.in_proj_bias = Parameter(np.zeros(3 * e, np.float32), "in_proj_bias") \
            if has_bias else None
        self.out_proj = Linear(e, e, bias=has_bias)
        if has_bias:
            self.out_proj.bias.assign(np.zeros(e, np.float32))

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "dropout": self.dropout, "bias": self.in_proj_bias is not None,
                "batch_first": self.batch_first}

    def __call__(self, query: Node, key: Node, value: Node, *args, **kwargs):
        # Module.__call__ takes nodes only; the masks and flags are no nodes.
        _check_inputs("MultiheadAttention", query=query, key=key, value=value)
        return self.forward(query, key, value, *args, **kwargs)

    def forward(self, query: Node, key: Node, value: Node, attn_mask=None,
                is_causal: bool = False, need_weights: bool = False, *,
                key_padding_mask=None) -> tuple[Node, None]:
        """``(output, None)``: the attended sequence, of the query's layout and shape.

        ``attn_mask``: (T, S) or (B * num_heads, T, S) as an array, boolean (True: may not
        attend) or float (added); a graph node is fed the float mask, shaped to broadcast
        to (B, num_heads, T, S). ``key_padding_mask``: a (B, S) array, True (or ``-inf``)
        at the keys to ignore. ``need_weights=True`` (PyTorch's default) is refused: dlsys
        does not return the attention weights.
        """
        if check_flag("MultiheadAttention: need_weights", need_weights):
            raise ArgumentError("MultiheadAttention: need_weights=True is not supported "
                                "(dlsys returns (output, None)); pass need_weights=False")
        mask = self._mask(attn_mask, key_padding_mask)
        q, k, v = (self._project(x, i) for i, x in enumerate((query, key, value)))
        dropout = self.dropout if self.training else 0.0
        heads = F.attention(q, k, v, mask, check_flag("is_causal", is_causal), dropout,
                            F.default_scale(self.head_dim))
        # (B, H, T, D) -> the query's layout, heads side by side: (B, T, E) or (T, B, E).
        perm = (0, 2, 1, 3) if self.batch_first else (2, 0, 1, 3)
        joined = reshape_op(transpose_op(heads, perm), (0, 0, self.embed_dim))
        return self.out_proj(joined), None

    def _project(self, x: Node, which: int) -> Node:
        """Query (0), key (1) or value (2) projection of ``x``, split into heads:
        (B, H, L, D). A dense layer with that part's rows of ``in_proj_weight`` (the tuned
        2-D matmul over every row of ``x``, forward and backward).

        One product of ``x`` with the whole (3E, E) weight, sliced afterwards, was measured
        against the three (GPT step, B=16, T=128, E=128): the same kernel time within 2 %
        (the 2-D matmul runs N=128 and N=384 at the same rate), but its gradient is the
        three slices' gradients written into zeros of (B, T, 3E) and added: 7 MB more planned
        memory, for 72 fewer kernel calls. The weight's slices are E * E each."""
        e = self.embed_dim
        rows = (which * e, (which + 1) * e)
        weight = slice_op(self.in_proj_weight, 0, *rows)
        bias = None if self.in_proj_bias is None else slice_op(self.in_proj_bias, 0, *rows)
        return self._split_heads(F.linear(x, weight, bias))

    def _split_heads(self, y: Node) -> Node:
        """``y`` (B, L, E) or (L, B, E) as heads (B, H, L, D): a reshape to (.., .., H, D)
        that keeps the fed sizes and moves no data, then one transpose."""
        heads = reshape_op(y, (0, 0, self.num_heads, self.head_dim))
        return transpose_op(heads, (0, 2, 1, 3) if self.batch_first else (1, 2, 0, 3))

    def _mask(self, attn_mask, key_padding_mask) -> Node | None:
        """The additive mask of the scores (B, H, T, S): arrays combine into one constant,
        a graph-node ``attn_mask`` is added as it is fed."""
        where = "MultiheadAttention"
        if isinstance(key_padding_mask, Node):
            # Its (B, S) would need a reshape to (B, 1, 1, S), unknown sizes before a feed.
            raise ArgumentTypeError(f"{where}: key_padding_mask must be an array; feed the "
                                    f"padding as an additive attn_mask of shape (B, 1, 1, S) "
                                    f"instead")
        fed = attn_mask if isinstance(attn_mask, Node) else None
        parts = []
        if attn_mask is not None and fed is None:
            parts.append(self._heads_mask(F.additive_mask(attn_mask, where, True)))
        if key_padding_mask is not None:
            padding = F.additive_mask(key_padding_mask, where, True)
            if padding.ndim != 2:
                raise ShapeError(f"{where}: key_padding_mask must be (B, S), got shape "
                                 f"{padding.shape}")
            parts.append(padding[:, None, None, :])
        if not parts:
            return fed
        try:
            constant = Parameter(np.add(*parts) if len(parts) == 2 else parts[0], "attn_mask")
        except ValueError:
            raise ShapeError(f"{where}: attn_mask of shape {parts[0].shape} and "
                             f"key_padding_mask of shape {parts[1].shape[::3]} do not "
                             f"broadcast together") from None
        return constant if fed is None else fed + constant

    def _heads_mask(self, mask: np.ndarray) -> np.ndarray:
        """PyTorch's (T, S) or (B * H, T, S) attention mask as one that broadcasts to the
        scores (B, H, T, S)."""
        if mask.ndim == 2:
            return mask
        if mask.ndim != 3 or mask.shape[0] % self.num_heads:
            raise ShapeError(f"MultiheadAttention: attn_mask must be (T, S) or "
                             f"(B * num_heads, T, S) with num_heads {self.num_heads}, got "
                             f"shape {mask.shape}")
        return mask.reshape(-1, self.num_heads, *mask.shape[1:])


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, each with a residual connection and a
    layer norm, as PyTorch's: after each block (``norm_first=False``, the original
    transformer) or before it (``norm_first=True``, as GPT).

    Submodules keep PyTorch's names (``self_attn``, ``linear1``, ``dropout``, ``linear2``,
    ``norm1``, ``norm2``, ``dropout1``, ``dropout2``), so its parameters' state dict keys are
    PyTorch's. The three dropouts hold their seeds as state (``dropout.seed``, ...), keys
    PyTorch does not have: load a PyTorch state dict with ``strict=False``.
    """

    builds_children = True

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ArgumentError(f"TransformerEncoderLayer: activation must be one of "
                                f"{sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.norm_first = check_flag("norm_first", norm_first)
        eps = check_constant("TransformerEncoderLayer: layer_norm_eps", layer_norm_eps)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias)
        self.norm1 = LayerNorm(d_model, eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def config(self) -> dict:
        attn = self.self_attn
        return {"d_model": attn.embed_dim, "nhead": attn.num_heads,
                "dim_feedforward": self.linear1.out_features, "dropout": self.dropout.p,
                "activation": self.activation, "layer_norm_eps": self.norm1.eps,
                "batch_first": attn.batch_first, "norm_first": self.norm_first,
                "bias": attn.in_proj_bias is not None}

    def __call__(self, src: Node, *args, **kwargs) -> Node:
        _check_inputs("TransformerEncoderLayer", src=src)
        return self.forward(src, *args, **kwargs)

    def forward(self, src: Node, src_mask=None, is_causal: bool = False, *,
                src_key_padding_mask=None) -> Node:
        """The layer applied to ``src`` (B, T, E) or (T, B, E); masks as
        ``MultiheadAttention``'s ``attn_mask`` and ``key_padding_mask``."""
        def attention_block(x: Node) -> Node:
            out, _ = self.self_attn(x, x, x, src_mask, is_causal,
                                    key_padding_mask=src_key_padding_mask)
            return self.dropout1(out)

        x = src
        if self.norm_first:
            x = x + attention_block(self.norm1(x))
            return x + self._feed_forward_block(self.norm2(x))
        x = self.norm1(x + attention_block(x))
        return self.norm2(x + self._feed_forward_block(x))

    def _feed_forward_block(self, x: Node) -> Node:
        hidden = self.dropout(ACTIVATIONS[self.activation](self.linear1(x)))
        return self.dropout2(self.linear2(hidden))
