"""The models ``dlsys train`` knows, built from ``dlsys.nn`` layers.

    logreg  784 -> 10
    mlp     784 -> hidden... -> 10 (default hidden 256,100), ReLU between layers

Parameters take PyTorch's names and layouts (``0.weight`` is ``(out, in)``) and its default
initialisation, drawn from a stream derived from the run's seed, so the same seed gives the
same model, and the numpy reference (``dlsys.testing.numpy_reference``) starts from exactly
the same point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlsys import nn
from dlsys.frontend.settings import (
    DEFAULT_HIDDEN,
    DEFAULT_MODEL,
    MODELS,
    layer_sizes,
    param_shapes,
    seed_streams,
)
from dlsys.nn import init


def build_model(name: str, seed: int = 0, hidden: Sequence[int] | None = None) -> nn.Module:
    """A fresh model, initialised from ``seed``'s initialisation stream."""
    sizes = layer_sizes(name, hidden)
    layers: list[nn.Module] = []
    with init.using_generator(seed_streams(seed)[0]):
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def init_params(name: str, seed: int, hidden: Sequence[int] | None = None
                ) -> dict[str, np.ndarray]:
    """The initial state dict of ``build_model(name, seed, hidden)``."""
    return build_model(name, seed, hidden).state_dict()


__all__ = ["build_model", "init_params", "param_shapes", "layer_sizes", "seed_streams",
           "DEFAULT_MODEL", "DEFAULT_HIDDEN", "MODELS"]
