"""Checkpoints written so that a crash at any moment leaves the last complete one loadable.

A checkpoint is one ``.npz`` file: each parameter and optimizer-state array under its own key,
and everything else (epoch, shuffling RNG state, metrics so far, run settings) as one JSON
document under ``meta``. It is loaded with ``allow_pickle=False``, so a checkpoint is data only.
Every file the trainer writes goes through :func:`atomic_file`: temporary file in the same
directory, fsync, ``os.replace``, fsync of the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from dlsys.errors import DataError

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT_VERSION = 1
TEMP_PREFIX = ".tmp-"
_PARAM = "param/"
_OPTIM = "optim/"
_META = "meta"


@dataclass
class Checkpoint:
    """Everything needed to continue training after ``epoch`` complete epochs."""

    epoch: int
    params: dict[str, np.ndarray]
    rng_state: dict
    metrics: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    # SGD keeps no state; the slot is here so momentum or Adam can add theirs without a new
    # format.
    optimizer: str = "sgd"
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file object whose contents replace ``path`` only if the block completes."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX + path.name + ".")
    try:
        # mkstemp makes the file private (0600); give it the mode open() would have.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some file systems cannot open a directory for this.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temp_files(directory: str | os.PathLike) -> None:
    """Delete temporary files left in ``directory`` by a process killed while writing."""
    for stale in Path(directory).glob(TEMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    meta = {
        "format_version": FORMAT_VERSION,
        "epoch": checkpoint.epoch,
        "rng_state": checkpoint.rng_state,
        "metrics": checkpoint.metrics,
        "config": checkpoint.config,
        "optimizer": checkpoint.optimizer,
    }
    arrays = {_PARAM + k: np.asarray(v) for k, v in checkpoint.params.items()}
    arrays.update({_OPTIM + k: np.asarray(v) for k, v in checkpoint.optimizer_state.items()})
    arrays[_META] = np.array(json.dumps(meta))
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; DataError if it is unusable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable checkpoint ({e})") from None
    try:
        meta = json.loads(str(arrays.pop(_META)))
        version = meta["format_version"]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed checkpoint metadata ({type(e).__name__}: {e})") \
            from None
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: checkpoint format {version}, this dlsys reads format "
                        f"{FORMAT_VERSION}")
    try:
        return Checkpoint(
            epoch=int(meta["epoch"]),
            params={k[len(_PARAM):]: v for k, v in arrays.items() if k.startswith(_PARAM)},
            rng_state=meta["rng_state"],
            metrics=list(meta["metrics"]),
            config=dict(meta["config"]),
            optimizer=meta["optimizer"],
            optimizer_state={k[len(_OPTIM):]: v for k, v in arrays.items()
                             if k.startswith(_OPTIM)},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed checkpoint metadata ({type(e).__name__}: {e})") \
            from None
