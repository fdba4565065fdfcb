"""Synthetic inputs for tests: small MNIST-format data sets written on the fly, for tests that
must not need the real one, and arrays placed off a vector boundary."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from dlsys.data.mnist import IDX_FILES


def misaligned(values: np.ndarray, offset_bytes: int) -> np.ndarray:
    """A copy of ``values`` starting ``offset_bytes`` past a 64-byte boundary (numpy places
    its own arrays on 16-byte ones), to check that kernels read memory wherever it lies."""
    raw = np.empty(values.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset_bytes
    array = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    array[...] = values
    return array


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in IDX format: magic ``0x0000 08 ndim``, big-endian dimensions, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def synthetic_images(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 uint8 images: a per-class prototype plus noise, and their labels."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(12345).uniform(0, 255, size=(10, 28, 28))
    labels = rng.integers(0, 10, size=num).astype(np.uint8)
    noise = rng.normal(0, 80, size=(num, 28, 28))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_idx_dataset(directory: str | os.PathLike, num_train: int = 600, num_test: int = 100,
                      gz: bool = False, seed: int = 0) -> Path:
    """Write the four IDX files of a synthetic data set into ``directory``; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_images(num_train, seed)
    test_images, test_labels = synthetic_images(num_test, seed + 1)
    arrays = {"train_images": train_images, "train_labels": train_labels,
              "test_images": test_images, "test_labels": test_labels}
    for key, stem in IDX_FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return directory


def write_pickle_dataset(path: str | os.PathLike, sizes: tuple[int, int, int] = (500, 100, 100),
                         seed: int = 0, protocol: int = 2) -> Path:
    """Write a ``mnist.pkl.gz``-style file: ``(train, valid, test)`` of (float images, labels)."""
    path = Path(path)
    parts = []
    for i, num in enumerate(sizes):
        images, labels = synthetic_images(num, seed + i)
        parts.append((images.reshape(num, 784).astype(np.float32) / 255.0,
                      labels.astype(np.int64)))
    path.write_bytes(gzip.compress(pickle.dumps(tuple(parts), protocol=protocol)))
    return path
