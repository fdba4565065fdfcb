"""Checkpoints written so that a crash at any moment leaves the last complete one loadable.

A checkpoint is one ``.npz`` file: each parameter and optimizer-state array under its own key,
and everything else (epoch, shuffling RNG state, metrics so far, run settings) as one JSON
document under ``meta``. It is loaded with ``allow_pickle=False``, so a checkpoint is data only.
Every file the trainer writes goes through :func:`atomic_file`: temporary file in the same
directory, fsync, ``os.replace``, fsync of the directory.

A checkpoint is data from outside: :func:`load_checkpoint` checks every part of it and
refuses it with a DataError naming the part, so no loader trains on, or crashes with, a
checkpoint that dlsys would not have written. Sizes come first, before any array is read:
every member's from the zip directory and its ``.npy`` header (at most ``MAX_ARRAY_BYTES``
each, ``MAX_CHECKPOINT_BYTES`` in all), members other than ``meta``, ``param/*`` and
``optim/*`` refused by name, then the parameters' names and shapes against the recorded
model and the optimiser's state against the parameters; then the settings, counters,
metrics and the RNG state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from dlsys.errors import DataError
from dlsys.frontend.models import recorded_param_shapes
from dlsys.frontend.settings import is_int, is_real, settings_problem
from dlsys.nn.serialization import npz_members, read_member

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT_VERSION = 1
# Distinctive, so that cleaning up after a killed writer never touches a user's own files.
TEMP_PREFIX = ".dlsys-tmp-"
# No array of a real checkpoint comes near this (the MLP's largest is 0.8 MB); a header that
# claims more is refused before numpy allocates it.
MAX_ARRAY_BYTES = 256 << 20
# All arrays together: the parameters (at most settings.MAX_PARAM_BYTES, 256 MiB), Adam's two
# moments of the same size, and the metadata.
MAX_CHECKPOINT_BYTES = 1 << 30
# The optimiser's state beside the parameters: Adam keeps two moments per parameter; the
# learning rate and step count are a few bytes.
_OPTIM_STATE_FACTOR = 2
_OPTIM_STATE_SLACK = 4096
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
    """Delete temporary files left in ``directory`` by a dlsys process killed while writing;
    only names made by :func:`atomic_file` (``TEMP_PREFIX``), nothing else."""
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
        with zipfile.ZipFile(path) as archive:
            members = npz_members(archive, str(path), MAX_CHECKPOINT_BYTES, MAX_ARRAY_BYTES)
            meta = _read_meta(archive, members, path)
            _check_members(members, meta["config"], path)
            arrays = {key: read_member(archive, key) for key in members if key != _META}
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint") from None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable checkpoint ({e})") from None
    checkpoint = Checkpoint(
        epoch=meta["epoch"],
        params={k[len(_PARAM):]: v for k, v in arrays.items() if k.startswith(_PARAM)},
        rng_state=meta["rng_state"],
        metrics=meta["metrics"],
        config=meta["config"],
        optimizer=meta["optimizer"],
        optimizer_state={k[len(_OPTIM):]: v for k, v in arrays.items() if k.startswith(_OPTIM)},
    )
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise DataError(f"{path}: unusable checkpoint: {problem}")
    return checkpoint


def _read_meta(archive: zipfile.ZipFile, members: dict, path: Path) -> dict:
    """The checkpoint's JSON metadata, its format and keys checked and its settings usable."""
    shape, dtype = members.get(_META, ((), np.dtype(np.float32)))
    if shape != () or dtype.kind != "U":
        raise DataError(f"{path}: malformed checkpoint metadata: no {_META} text")
    try:
        meta = json.loads(str(read_member(archive, _META)))
        version = meta["format_version"]
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: malformed checkpoint metadata ({type(e).__name__}: {e})") \
            from None
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: checkpoint format {version}, this dlsys reads format "
                        f"{FORMAT_VERSION}")
    missing = [key for key in ("epoch", "rng_state", "metrics", "config", "optimizer")
               if key not in meta]
    if missing:
        raise DataError(f"{path}: malformed checkpoint metadata: no {', '.join(missing)}")
    problem = settings_problem(meta["config"])
    if problem is not None:
        raise DataError(f"{path}: unusable checkpoint: {problem}")
    return meta


def _check_members(members: dict, config: dict, path: Path) -> None:
    """Refuse, before any array is read, members a checkpoint of ``config``'s model would
    not hold: unknown names, parameters of other names or shapes than the model's, and more
    optimiser state than Adam keeps for those parameters."""
    unknown = sorted(key for key in members
                     if key != _META and not key.startswith((_PARAM, _OPTIM)))
    if unknown:
        raise DataError(f"{path}: unknown checkpoint members {', '.join(unknown)}; a "
                        f"checkpoint holds {_META}, {_PARAM}* and {_OPTIM}*")
    params = {key[len(_PARAM):]: value for key, value in members.items()
              if key.startswith(_PARAM)}
    problem = _shapes_problem(config, {name: (shape, dtype) for name, (shape, dtype)
                                       in params.items()})
    if problem is not None:
        raise DataError(f"{path}: unusable checkpoint: {problem}")
    param_bytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in params.values())
    optim_bytes = sum(math.prod(shape) * dtype.itemsize for key, (shape, dtype)
                      in members.items() if key.startswith(_OPTIM))
    if optim_bytes > _OPTIM_STATE_FACTOR * param_bytes + _OPTIM_STATE_SLACK:
        raise DataError(f"{path}: unusable checkpoint: {optim_bytes} bytes of optimizer "
                        f"state for {param_bytes} bytes of parameters; no optimizer keeps "
                        f"more than {_OPTIM_STATE_FACTOR} arrays per parameter")


def checkpoint_problem(checkpoint: Checkpoint) -> str | None:
    """What makes ``checkpoint`` unusable for training, or None if nothing does."""
    for check in (_settings_problem, _params_problem, _progress_problem, _rng_problem,
                  _optimizer_problem):
        problem = check(checkpoint)
        if problem is not None:
            return problem
    return None


def _settings_problem(checkpoint: Checkpoint) -> str | None:
    return settings_problem(checkpoint.config)


def _params_problem(checkpoint: Checkpoint) -> str | None:
    problem = _shapes_problem(checkpoint.config, {name: (array.shape, array.dtype)
                                                  for name, array in checkpoint.params.items()})
    if problem is not None:
        return problem
    for name, array in checkpoint.params.items():
        if not np.isfinite(array).all():
            return f"parameter {name} holds NaN or infinite values"
    return None


def _shapes_problem(config: dict, params: dict[str, tuple[tuple[int, ...], np.dtype]]
                    ) -> str | None:
    """Why parameters of these names, shapes and dtypes are not ``config``'s model's."""
    # Exact names and shapes: a bias of (1, 256) for (256,) would broadcast and train on.
    expected = recorded_param_shapes(config)
    if expected is None:
        return f"model {config['model']!r} records no vocabulary, so no parameter shapes"
    missing = [name for name in expected if name not in params]
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        return (f"parameters of model {config['model']!r} are {', '.join(expected)}; "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}")
    for name, shape in expected.items():
        got_shape, dtype = params[name]
        if tuple(got_shape) != tuple(shape) or dtype != np.float32:
            return (f"parameter {name} must be float32 of shape {tuple(shape)}, got "
                    f"{dtype} of shape {tuple(got_shape)}")
    return None


def _progress_problem(checkpoint: Checkpoint) -> str | None:
    epoch, metrics = checkpoint.epoch, checkpoint.metrics
    if not is_int(epoch) or epoch < 1:
        return f"epoch must be a positive integer, got {epoch!r}"
    # One metrics row per completed epoch: also bounds the epoch by what the file holds.
    if not isinstance(metrics, list) or len(metrics) != epoch:
        count = len(metrics) if isinstance(metrics, list) else repr(metrics)
        return f"epoch {epoch} needs one metrics row per epoch, got {count}"
    for number, row in enumerate(metrics, start=1):
        if (not isinstance(row, dict) or row.get("epoch") != number
                or not is_int(row["epoch"])
                or not all(isinstance(k, str) for k in row)
                or not all(is_real(v) or v is None
                           or (isinstance(v, list) and all(is_real(x) for x in v))
                           for v in row.values())):
            return f"metrics row {number} must map names to finite numbers with epoch " \
                   f"{number}, got {row!r}"
    return None


def _rng_problem(checkpoint: Checkpoint) -> str | None:
    state = checkpoint.rng_state
    inner = state.get("state") if isinstance(state, dict) else None
    well_formed = (
        isinstance(state, dict)
        and set(state) == {"bit_generator", "state", "has_uint32", "uinteger"}
        and state["bit_generator"] == "PCG64"
        and isinstance(inner, dict) and set(inner) == {"state", "inc"}
        and all(is_int(v) and 0 <= v < 2**128 for v in inner.values())
        and state["has_uint32"] in (0, 1) and is_int(state["has_uint32"])
        and is_int(state["uinteger"]) and 0 <= state["uinteger"] < 2**32)
    if not well_formed:
        return "shuffling RNG state is not a PCG64 state"
    try:
        np.random.PCG64().state = state
    except (TypeError, ValueError, OverflowError) as e:
        return f"shuffling RNG state is not a PCG64 state ({e})"
    return None


def _optimizer_problem(checkpoint: Checkpoint) -> str | None:
    if not isinstance(checkpoint.optimizer, str) or not checkpoint.optimizer:
        return f"optimizer must be a name, got {checkpoint.optimizer!r}"
    for name, array in checkpoint.optimizer_state.items():
        if array.dtype.kind != "f" or not np.isfinite(array).all():
            return f"optimizer state {name} must hold finite floats"
    return None
