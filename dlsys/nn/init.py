"""Random initialisation: one seeded generator for every layer, PyTorch's default schemes.

``dlsys.manual_seed(s)`` makes every later initialisation reproducible. The distributions
and bounds follow PyTorch's defaults (so a model behaves alike at the start), but the
numbers come from numpy's generator: dlsys and PyTorch models seeded alike still differ;
move weights between them through ``state_dict``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator

import numpy as np

from dlsys.errors import ArgumentTypeError

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator behind every layer's initialisation (and dropout's masks)."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ArgumentTypeError(f"manual_seed takes a non-negative int, got {seed!r}")
    _generator = np.random.default_rng(int(seed))


def generator() -> np.random.Generator:
    return _generator


@contextlib.contextmanager
def using_generator(rng: np.random.Generator) -> Iterator[None]:
    """Initialise from ``rng`` inside the block (the front end derives it from a run's seed)."""
    global _generator
    saved, _generator = _generator, rng
    try:
        yield
    finally:
        _generator = saved


def uniform(shape: tuple[int, ...], bound: float) -> np.ndarray:
    """float32 samples from U(-bound, bound)."""
    return _generator.uniform(-bound, bound, size=shape).astype(np.float32)


def default_weight(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """PyTorch's default for Linear and Conv2d weights: Kaiming-uniform with a = sqrt(5),
    which works out to U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    gain = math.sqrt(2.0 / (1 + 5))
    return uniform(shape, math.sqrt(3.0) * gain / math.sqrt(fan_in))


def default_bias(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """PyTorch's default for Linear and Conv2d biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(shape, 1.0 / math.sqrt(fan_in))
