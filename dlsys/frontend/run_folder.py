"""A run's output folder: one run at a time (a lock), never another run's files overwritten
by accident, and the run's settings recorded before its first epoch.

``run.json`` holds every setting of the run as it started, so ``--resume`` restores all of
them, whether or not a checkpoint was written yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

from dlsys.errors import DataError, DlsysError
from dlsys.frontend.checkpoint import atomic_file
from dlsys.frontend.settings import settings_problem

SETTINGS_FILE = "run.json"
LOCK_FILE = ".dlsys-lock"
# What a run writes; ``--overwrite`` removes these, never a user's own files.
RUN_FILES = (SETTINGS_FILE, "checkpoint.npz", "metrics.json", "metrics.csv", "curves.png",
             "params.npz", "model.npz")


class RunFolderError(DlsysError):
    """An output folder that holds another run, or one in use by a running process."""


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the block; a second run into the same folder gets an error."""
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunFolderError(f"{out} is in use by another dlsys run; wait for it or "
                                 f"choose another --out") from None
        yield
    finally:
        handle.close()  # closing releases the lock


def prepare(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding an earlier run unless resuming it or told to overwrite it."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if not existing or resume:
        return
    if not overwrite:
        raise RunFolderError(f"{out} holds an earlier run ({', '.join(existing)}); continue it "
                             f"with --resume, replace it with --overwrite, or choose another "
                             f"--out")
    for name in existing:
        (out / name).unlink()


def record_settings(out: Path, settings: dict) -> None:
    with atomic_file(out / SETTINGS_FILE) as f:
        f.write(json.dumps(settings, indent=1, sort_keys=True).encode())


def recorded_settings(out: Path) -> dict | None:
    """The settings a run recorded in ``out`` when it started, or None if none did."""
    path = out / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: unreadable run settings ({err})") from None
    if not isinstance(settings, dict):
        raise DataError(f"{path}: run settings must be a JSON object")
    # Checked here, naming the file: a recorded setting is obeyed (a width, allocated).
    problem = settings_problem(settings)
    if problem is not None:
        raise DataError(f"{path}: unusable run settings: {problem}")
    return settings


__all__ = ["RunFolderError", "locked", "prepare", "record_settings", "recorded_settings",
           "RUN_FILES", "SETTINGS_FILE", "LOCK_FILE"]
