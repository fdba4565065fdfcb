"""``dlsys.nn.gpt.GPT`` written in PyTorch, parameter for parameter (the same state-dict
names and shapes), for tests and benchmarks that move weights across and compare: losses
step for step, step times. PyTorch is a reference here only; dlsys never imports this
module to compute."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchGPTBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        attended, _ = self.attn(h, h, h, attn_mask=causal, is_causal=True, need_weights=False)
        x = x + attended
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    """The same model as ``dlsys.nn.gpt.GPT`` (dropout 0)."""

    def __init__(self, vocab_size: int, context: int = 128, width: int = 128, heads: int = 4,
                 layers: int = 4):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(TorchGPTBlock(width, heads) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        for block in self.blocks:
            x = block(x, causal)
        return self.head(self.ln_f(x))

    def load_numpy(self, state: dict[str, np.ndarray]) -> None:
        """Load a dlsys state dict (numpy arrays of the same names)."""
        own = self.state_dict()
        self.load_state_dict({name: torch.from_numpy(np.asarray(state[name]).astype(
            own[name].numpy().dtype)) for name in own})


def _decode_block(block: TorchGPTBlock, x: torch.Tensor, cache: list) -> torch.Tensor:
    """One new position ``x`` (1, 1, W) through ``block``, appending its key and value to
    ``cache`` ([keys, values], each (1, H, t, D) or None)."""
    attn = block.attn
    heads, width = attn.num_heads, attn.embed_dim
    h = block.ln_1(x)
    q, k, v = torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias).split(
        width, dim=-1)
    q, k, v = (t.reshape(1, 1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    cache[0] = k if cache[0] is None else torch.cat([cache[0], k], dim=2)
    cache[1] = v if cache[1] is None else torch.cat([cache[1], v], dim=2)
    out = torch.nn.functional.scaled_dot_product_attention(q, cache[0], cache[1])
    x = x + attn.out_proj(out.transpose(1, 2).reshape(1, 1, width))
    return x + block.mlp(block.ln_2(x))


def sample_with_cache(model: TorchGPT, prompt: list[int], tokens: int, seed: int = 0
                      ) -> list[int]:
    """``tokens`` ids drawn (temperature 1, no top-k) after ``prompt``, one position per
    token with a key/value cache per layer: PyTorch's side of the sampling benchmark."""
    generator = torch.Generator().manual_seed(seed)
    caches = [[None, None] for _ in model.blocks]
    out = list(prompt)
    for position, token in enumerate(out):  # the prompt fills the caches
        logits = _step(model, token, position, caches)
    for position in range(len(out), len(out) + tokens):
        probabilities = torch.softmax(logits, dim=-1)
        token = int(torch.multinomial(probabilities, 1, generator=generator))
        out.append(token)
        if position >= model.position_embedding.num_embeddings:
            break
        logits = _step(model, token, position, caches)
    return out


def _step(model: TorchGPT, token: int, position: int, caches: list) -> torch.Tensor:
    x = (model.token_embedding.weight[token] + model.position_embedding.weight[position])
    x = x.reshape(1, 1, -1)
    for block, cache in zip(model.blocks, caches):
        x = _decode_block(block, x, cache)
    return model.head(model.ln_f(x)).reshape(-1)
