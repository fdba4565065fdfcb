"""The front end's models trained in plain numpy: the yardstick for tests and benchmarks.

Same initial parameters (``models.init_params``), same data order (``epoch_batches`` on the
same shuffling stream), same mean softmax cross-entropy and plain SGD as the dlsys trainer,
so the two should reach the same accuracy. Never used by training itself: the project's rule
is that every operator of a training step runs as TVM-generated code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dlsys.data.batches import epoch_batches
from dlsys.data.mnist import Split
from dlsys.frontend.models import init_params, seed_streams


def _layers(params: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(weight, bias) names of each dense layer: the parameters come in layer order."""
    names = list(params)
    return list(zip(names[0::2], names[1::2]))


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list]:
    """Logits for ``x`` and, per layer, the (input, pre-activation) pair backward needs."""
    layers = _layers(params)
    h, cache = x, []
    for i, (weight, bias) in enumerate(layers, start=1):
        z = h @ params[weight].T + params[bias]  # PyTorch's layout: weight is (out, in)
        cache.append((h, z))
        h = np.maximum(z, 0) if i < len(layers) else z
    return h, cache


def loss_and_grads(params: dict[str, np.ndarray], x: np.ndarray,
                   y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of a batch and its exact gradient for every parameter."""
    logits, cache = forward(params, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(np.mean(-(y * (shifted - log_sum)).sum(axis=1)))
    dz = (np.exp(shifted - log_sum) - y) / np.float32(len(x))
    grads: dict[str, np.ndarray] = {}
    layers = _layers(params)
    for i in range(len(cache), 0, -1):
        h, _ = cache[i - 1]
        weight, bias = layers[i - 1]
        grads[weight] = dz.T @ h
        grads[bias] = dz.sum(axis=0)
        if i > 1:
            dz = (dz @ params[weight]) * (cache[i - 2][1] > 0)
    return loss, grads


def accuracy(params: dict[str, np.ndarray], split: Split) -> float:
    """The fraction of ``split`` whose largest logit is the true class."""
    logits, _ = forward(params, split.images)
    return float(np.mean(np.argmax(logits, axis=1) == split.labels))


@dataclass
class ReferenceResult:
    """Final parameters and per-epoch ``{"epoch", "loss", "epoch_time_s", "val_acc"}``."""

    params: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)


def train(model: str, train_split: Split, val_split: Split, *, epochs: int, batch_size: int,
          lr: float, seed: int, hidden=None) -> ReferenceResult:
    """Train ``model`` with mini-batch SGD exactly as ``dlsys train`` does, in numpy."""
    params = init_params(model, seed, hidden)
    _, shuffle_rng = seed_streams(seed)
    lr32 = np.float32(lr)
    result = ReferenceResult(params)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        losses = []
        for idx in epoch_batches(shuffle_rng, len(train_split), batch_size):
            loss, grads = loss_and_grads(params, train_split.images[idx],
                                         train_split.one_hot[idx])
            losses.append(loss)
            for name, grad in grads.items():
                params[name] -= lr32 * grad
        elapsed = time.perf_counter() - start
        result.history.append({"epoch": epoch, "loss": float(np.mean(losses)),
                               "epoch_time_s": elapsed,
                               "val_acc": accuracy(params, val_split)})
    return result
