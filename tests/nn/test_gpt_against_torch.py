"""The same GPT in PyTorch and in dlsys, weights moved across through state dicts, trains
to the same losses for 20 AdamW steps on the same batches (float32)."""

import numpy as np
import pytest
import torch

import dlsys
import dlsys.autodiff as ad
from dlsys import optim
from dlsys.nn import functional as F
from dlsys.nn.gpt import GPT
from dlsys.ops import reshape_op
from dlsys.testing.torch_gpt import TorchGPT

VOCAB, CONTEXT, WIDTH, HEADS, LAYERS = 13, 16, 16, 2, 2


def _batches(steps: int, batch: int, length: int):
    # Each target is a fixed function of its token: something to learn in 20 steps.
    rng = np.random.default_rng(5)
    inputs = [rng.integers(0, VOCAB, (batch, length)) for _ in range(steps)]
    return [(x, (3 * x + 1) % VOCAB) for x in inputs]


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_twenty_adamw_steps_match_pytorch(max_grad_norm):
    dlsys.manual_seed(3)
    model = GPT(VOCAB, CONTEXT, WIDTH, HEADS, LAYERS)
    reference = TorchGPT(VOCAB, CONTEXT, WIDTH, HEADS, LAYERS)
    reference.load_numpy(model.state_dict())
    ids, positions, targets = ad.Variable("ids"), ad.Variable("positions"), ad.Variable("t")
    logits = model(ids, positions)
    loss = F.cross_entropy(reshape_op(logits, (-1, VOCAB)), reshape_op(targets, (-1,)))
    step = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1).minimize(
        loss, max_grad_norm=max_grad_norm)
    torch_optimizer = torch.optim.AdamW(reference.parameters(), lr=3e-3, weight_decay=0.1)
    got, want = [], []
    for x, y in _batches(20, 3, 11):
        got.append(step({ids: x, positions: np.arange(11), targets: y}))
        torch_optimizer.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(
            reference(torch.from_numpy(x)).reshape(-1, VOCAB), torch.from_numpy(y).reshape(-1))
        torch_loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(reference.parameters(), max_grad_norm)
        torch_optimizer.step()
        want.append(torch_loss.item())
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got[-1] < 0.8 * got[0]  # it learns
    state = model.state_dict()
    for name, value in reference.state_dict().items():
        mine, theirs = state[name], value.numpy()
        if name.endswith("in_proj_bias"):
            # The key bias adds q.b to every score of a row, which softmax cancels: its
            # gradient is rounding noise, which Adam's step turns into arbitrary tiny moves.
            keep = np.r_[0:WIDTH, 2 * WIDTH:3 * WIDTH]
            mine, theirs = mine[keep], theirs[keep]
        np.testing.assert_allclose(mine, theirs, rtol=1e-3, atol=1e-5, err_msg=name)
