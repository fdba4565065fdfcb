"""The order in which training sees its examples, shared by dlsys and the numpy reference."""

from __future__ import annotations

import numpy as np

from dlsys.errors import ArgumentError


def epoch_batches(rng: np.random.Generator, num_examples: int,
                  batch_size: int) -> list[np.ndarray]:
    """One epoch's mini-batches: index arrays of a fresh permutation drawn from ``rng``.

    The last incomplete batch is dropped: every batch then has the one shape the executor's
    kernels were compiled for, and the mean loss weighs every batch alike. The permutation
    differs each epoch, so the dropped examples do too.
    """
    if not 0 < batch_size <= num_examples:
        raise ArgumentError(f"batch size {batch_size} must be in 1..{num_examples}")
    order = rng.permutation(num_examples)
    count = num_examples // batch_size
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]
