"""A decoder-only transformer over characters (GPT), built from ``dlsys.nn`` modules.

Token ids (B, T) and their positions (T,) are looked up in two embeddings and added; then
``layers`` pre-norm blocks, each ``x + attention(norm(x))`` (causal self-attention, PyTorch's
``MultiheadAttention`` with ``batch_first``) and ``x + mlp(norm(x))`` (width -> 4 x width ->
GELU -> width); a final layer norm and a linear head give (B, T, vocab) logits.

``decode_step`` builds the graph of one new position for incremental decoding: the keys and
values of the earlier positions come in as a cache (one (1, H, context, D) array per layer
for keys and one for values, zeros past the last position written), the new position's key
and value are written into its slot, and the updated caches come out beside the logits.
Each new token then costs one position's work (and attention over the cache), where the
whole forward pass would recompute every position of the context.
"""

from __future__ import annotations

import numpy as np

from dlsys.errors import ShapeError
from dlsys.graph import Node
from dlsys.nn import functional as F
from dlsys.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, check_size
from dlsys.nn.module import Module, Sequential
from dlsys.nn.serialization import register_layer_state
from dlsys.nn.transformer import MultiheadAttention
from dlsys.ops import reshape_to_op, transpose_op

# What a masked cache slot adds to its score: exp() of it is exactly 0 in float32.
MASKED = -np.inf


class GPTBlock(Module):
    """One pre-norm block: ``x + attn(ln_1(x))`` (causal), then ``x + mlp(ln_2(x))``."""

    # Its config rebuilds the children (dlsys.nn.serialization saves the config alone).
    builds_children = True

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadAttention(width, heads, dropout, batch_first=True)
        self.ln_2 = LayerNorm(width)
        mlp = [Linear(width, 4 * width), GELU(), Linear(4 * width, width)]
        # Dropout modules only where they drop: each holds a seed in the state dict.
        self.mlp = Sequential(*mlp, Dropout(dropout)) if dropout else Sequential(*mlp)
        self.dropout = Dropout(dropout) if dropout else None

    def config(self) -> dict:
        return {"width": self.attn.embed_dim, "heads": self.attn.num_heads,
                "dropout": self.attn.dropout}

    def forward(self, x: Node) -> Node:
        h = self.ln_1(x)
        attended, _ = self.attn(h, h, h, is_causal=True, need_weights=False)
        if self.dropout is not None:
            attended = self.dropout(attended)
        x = x + attended
        return x + self.mlp(self.ln_2(x))

    def decode_step(self, x: Node, keys: Node, values: Node, slot: Node,
                    mask: Node) -> tuple[Node, Node, Node]:
        """The block on one new position ``x`` (1, 1, W) with the cached ``keys`` and
        ``values`` (1, H, context, D): returns the block's output and the caches with the
        new key and value added in at ``slot`` (1, 1, context, 1), one-hot; ``mask`` (1, 1,
        1, context) is 0 at the positions written so far and the new one, -inf after."""
        attn = self.attn
        h = self.ln_1(x)
        # (1, H, 1, D) each: MultiheadAttention's own projections, split into heads.
        q, k, v = (attn._project(h, which) for which in range(3))
        keys = keys + slot * k
        values = values + slot * v
        heads = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        attended = attn.out_proj(reshape_to_op(transpose_op(heads, (0, 2, 1, 3)), x))
        x = x + attended
        return x + self.mlp(self.ln_2(x)), keys, values


class GPT(Module):
    """A character-level GPT: ``forward(ids, positions)`` gives (B, T, vocab_size) logits
    for ids (B, T) and positions (T,) (``positions(T)``, which checks T)."""

    builds_children = True

    def __init__(self, vocab_size: int, context: int = 128, width: int = 128, heads: int = 4,
                 layers: int = 4, dropout: float = 0.0):
        super().__init__()
        self.context = check_size("GPT", "context", context)
        self.num_layers = check_size("GPT", "layers", layers)
        self.token_embedding = Embedding(vocab_size, width)
        self.position_embedding = Embedding(self.context, width)
        self.dropout = Dropout(dropout) if dropout else None
        self.blocks = Sequential(*(GPTBlock(width, heads, dropout)
                                   for _ in range(self.num_layers)))
        self.ln_f = LayerNorm(width)
        self.head = Linear(width, vocab_size)

    def config(self) -> dict:
        block = self.blocks[0]
        return {"vocab_size": self.token_embedding.num_embeddings, "context": self.context,
                "width": block.attn.embed_dim, "heads": block.attn.num_heads,
                "layers": self.num_layers, "dropout": block.attn.dropout}

    @property
    def vocab_size(self) -> int:
        return self.token_embedding.num_embeddings

    @property
    def cache_shape(self) -> tuple[int, int, int, int]:
        """The shape of one layer's key (or value) cache: (1, heads, context, head size)."""
        attn = self.blocks[0].attn
        return (1, attn.num_heads, self.context, attn.head_dim)

    def positions(self, length: int) -> np.ndarray:
        """The position ids of a sequence of ``length`` tokens, ``0..length-1``; a
        ShapeError when it is longer than the position table."""
        if length > self.context:
            raise ShapeError(f"GPT: a sequence of {length} tokens is longer than the "
                             f"position table of {self.context} (the model's context)")
        return np.arange(length, dtype=np.int64)

    def forward(self, ids: Node, positions: Node) -> Node:
        x = self.token_embedding(ids) + self.position_embedding(positions)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.head(self.ln_f(self.blocks(x)))

    def decode_step(self, ids: Node, position: Node, caches: list[Node], slot: Node,
                    mask: Node) -> tuple[Node, list[Node]]:
        """The graph of one new position (see the module docstring): ``ids`` (1, 1), its
        ``position`` (1,), ``caches`` the keys then the values of each layer in turn
        (2 x layers nodes, see ``cache_shape``), ``slot`` and ``mask`` as in
        ``GPTBlock.decode_step``. Returns the (1, 1, vocab) logits and the updated caches."""
        if len(caches) != 2 * self.num_layers:
            raise ShapeError(f"GPT.decode_step: {len(caches)} caches for {self.num_layers} "
                             f"layers; it takes keys and values for each")
        x = self.token_embedding(ids) + self.position_embedding(position)
        updated: list[Node] = []
        for i, block in enumerate(self.blocks):
            x, keys, values = block.decode_step(x, caches[2 * i], caches[2 * i + 1], slot, mask)
            updated += [keys, values]
        return self.head(self.ln_f(x)), updated


def _block_shapes(width: int, dropout: float) -> dict[str, tuple[int, ...]]:
    """A GPTBlock's state dict names and shapes."""
    shapes = {"ln_1.weight": (width,), "ln_1.bias": (width,),
              "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
              "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
              "ln_2.weight": (width,), "ln_2.bias": (width,),
              "mlp.0.weight": (4 * width, width), "mlp.0.bias": (4 * width,),
              "mlp.2.weight": (width, 4 * width), "mlp.2.bias": (width,)}
    if dropout:
        shapes.update({"mlp.3.seed": (1,), "dropout.seed": (1,)})
    return shapes


def gpt_state_shapes(vocab_size: int, context: int, width: int, heads: int, layers: int,
                     dropout: float = 0.0) -> dict[str, tuple[int, ...]]:
    """The state dict's names and shapes of ``GPT(vocab_size, context, width, heads, layers,
    dropout)``, computed without building it: a checkpoint or model file is checked against
    them before anything is allocated. (``heads`` changes no shape: the heads split the
    width.)"""
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (vocab_size, width),
                                          "position_embedding.weight": (context, width)}
    if dropout:
        shapes["dropout.seed"] = (1,)
    for i in range(layers):
        shapes.update({f"blocks.{i}.{name}": shape
                       for name, shape in _block_shapes(width, dropout).items()})
    shapes.update({"ln_f.weight": (width,), "ln_f.bias": (width,),
                   "head.weight": (vocab_size, width), "head.bias": (vocab_size,)})
    return shapes


def _valid(args: dict, *names: str) -> bool:
    """Whether the constructor takes these arguments (else it is built, for its error)."""
    sizes = [args[name] for name in names]
    return (all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)
            and args["width"] % args["heads"] == 0
            and isinstance(args["dropout"], (int, float)) and 0 <= args["dropout"] <= 1)


register_layer_state("GPTBlock", lambda args: _block_shapes(args["width"], args["dropout"])
                     if _valid(args, "width", "heads") else None)
register_layer_state("GPT", lambda args: gpt_state_shapes(**args) if _valid(
    args, "vocab_size", "context", "width", "heads", "layers") else None)


def decode_inputs(position: int, context: int) -> tuple[np.ndarray, np.ndarray]:
    """The slot (1, 1, context, 1) one-hot at ``position`` and the additive mask (1, 1, 1,
    context), 0 up to ``position`` and -inf after, that ``GPT.decode_step`` is fed."""
    slot = np.zeros((1, 1, context, 1), np.float32)
    slot[0, 0, position, 0] = 1.0
    mask = np.zeros((1, 1, 1, context), np.float32)
    mask[..., position + 1:] = MASKED
    return slot, mask


__all__ = ["GPT", "GPTBlock", "decode_inputs", "gpt_state_shapes"]
