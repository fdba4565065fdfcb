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
