"""The models ``dlsys train`` knows, built from ``dlsys.nn`` layers.

    logreg  784 -> 10
    mlp     784 -> hidden... -> 10 (default hidden 256,100), ReLU between layers
    lenet   LeNet-5: conv 6@5x5 (padding 2), pool, conv 16@5x5, pool, 120, 84, 10
    cnn     two conv 3x3 + batch norm + ReLU + pool blocks (32, 64), 128, 10

Parameters take PyTorch's names and layouts (``0.weight`` is ``(out, in)``) and its default
initialisation, drawn from a stream derived from the run's seed, so the same seed gives the
same model, and the numpy reference (``dlsys.testing.numpy_reference``) starts from exactly
the same point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dlsys import nn
from dlsys.errors import ArgumentError
from dlsys.frontend.settings import (
    DEFAULT_HIDDEN,
    DEFAULT_MODEL,
    INPUT_SHAPES,
    MODELS,
    NUM_CLASSES,
    check_model,
    layer_sizes,
    seed_streams,
)
from dlsys.nn import init
from dlsys.nn.gpt import gpt_state_shapes


def _dense(sizes: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return layers


def _lenet() -> list[nn.Module]:
    """LeNet-5 for 28 x 28 images: two convolutions (6 and 16 filters of 5 x 5, the first
    padded to keep 28 x 28), each with ReLU and 2 x 2 max pooling, then 120-84-10."""
    return [nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            *_dense((16 * 5 * 5, 120, 84, NUM_CLASSES))]


def _cnn() -> list[nn.Module]:
    """Two conv-batchnorm-ReLU-pool blocks of 32 and 64 channels (3 x 3, padded), then a
    classifier with one hidden layer of 128."""
    blocks: list[nn.Module] = []
    for fan_in, fan_out in ((1, 32), (32, 64)):
        blocks += [nn.Conv2d(fan_in, fan_out, 3, padding=1), nn.BatchNorm2d(fan_out),
                   nn.ReLU(), nn.MaxPool2d(2)]
    return [*blocks, nn.Flatten(), *_dense((64 * 7 * 7, 128, NUM_CLASSES))]


def build_model(name: str, seed: int = 0, hidden: Sequence[int] | None = None) -> nn.Module:
    """A fresh image model, initialised from ``seed``'s initialisation stream (the GPT's
    size depends on its corpus: ``dlsys.frontend.lm.build_gpt``)."""
    if check_model(name) == "gpt":
        raise ArgumentError("build_model builds the image models; build the GPT with "
                            "dlsys.nn.gpt.GPT(vocab_size, ...)")
    with init.using_generator(seed_streams(seed)[0]):
        if name == "lenet":
            return nn.Sequential(*_lenet())
        if name == "cnn":
            return nn.Sequential(*_cnn())
        return nn.Sequential(*_dense(layer_sizes(name, hidden)))


def init_params(name: str, seed: int, hidden: Sequence[int] | None = None
                ) -> dict[str, np.ndarray]:
    """The initial state dict of ``build_model(name, seed, hidden)``."""
    return build_model(name, seed, hidden).state_dict()


def param_shapes(name: str, hidden: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """State-dict names (``0.weight``, ``0.bias``, ``2.weight``, ...; buffers too) and shapes,
    in order.

    For the dense models, computed from the layer sizes without building the model: a
    checkpoint's settings are checked against its arrays before either is allocated.
    """
    if check_model(name) in ("lenet", "cnn"):  # fixed and small (0.2 and 1.7 MB)
        return {key: value.shape for key, value in init_params(name, 0, hidden).items()}
    shapes: dict[str, tuple[int, ...]] = {}
    sizes = layer_sizes(name, hidden)
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        # _dense puts a ReLU after every Linear but the last: the Linears are 0, 2, 4...
        shapes[f"{2 * i}.weight"], shapes[f"{2 * i}.bias"] = (fan_out, fan_in), (fan_out,)
    return shapes


def recorded_param_shapes(config: Mapping) -> dict[str, tuple[int, ...]] | None:
    """The state-dict names and shapes of the model a run's settings record (``run.json``,
    a checkpoint's) describes, without building it; None for a GPT whose record lacks the
    vocabulary (its size is the corpus's)."""
    if config["model"] != "gpt":
        return param_shapes(config["model"], config.get("hidden"))
    if not config.get("vocab"):
        return None
    return gpt_state_shapes(len(config["vocab"]), config["context"], config["width"],
                            config["heads"], config["layers"], config["dropout"])


__all__ = ["build_model", "recorded_param_shapes", "init_params", "param_shapes", "layer_sizes",
           "seed_streams",
           "DEFAULT_MODEL", "DEFAULT_HIDDEN", "MODELS", "INPUT_SHAPES"]
