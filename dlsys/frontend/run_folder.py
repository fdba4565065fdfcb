"""A run's output folder: one run at a time (a lock), never another run's files overwritten
by accident, and the run's settings recorded before its first epoch.

``run.json`` holds every setting of the run as it started, so ``--resume`` restores all of
them, whether or not a checkpoint was written yet.

Without ``--out`` a run gets a folder of its own, so that running the same command twice
trains twice instead of stopping at the first run's files: the first of ``runs/<model>``,
``runs/<model>-2``, ``runs/<model>-3``, ... that holds no run. ``--resume`` without
``--out`` continues the latest of those (the one whose settings were recorded last).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

from dlsys.errors import DataError, DlsysError
from dlsys.frontend.checkpoint import atomic_file
from dlsys.frontend.settings import RUNS_DIR, RunSettings

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


def prepare(out: Path, resume: bool, overwrite: bool, command: str | None = None) -> None:
    """Refuse a folder holding an earlier run unless resuming it or told to overwrite it;
    the refusal shows the commands that do either (``command``: the one refused)."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if not existing or resume:
        return
    if not overwrite:
        replace = f"{command} --overwrite" if command else "--overwrite"
        raise RunFolderError(f"{out} holds an earlier run ({', '.join(existing)}); continue it "
                             f"with: {resume_command(out)}; replace it with: {replace}; or "
                             f"choose another --out")
    for name in existing:
        (out / name).unlink()


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out``."""
    return f"dlsys train --out {shlex.quote(str(out))} --resume"


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds any of a run's files."""
    return any((folder / name).exists() for name in RUN_FILES)


def fresh_folder(model: str, root: Path = Path(RUNS_DIR)) -> Path:
    """The first of ``root/model``, ``root/model-2``, ... that holds no run (an empty
    folder, or one a run left before recording its settings, is free)."""
    folder, number = root / model, 1
    while folder.exists() and (not folder.is_dir() or holds_run(folder)):
        number += 1
        folder = root / f"{model}-{number}"
    return folder


def latest_run(models: Sequence[str], root: Path = Path(RUNS_DIR)) -> Path:
    """The run folder of one of ``models`` under ``root`` (named as :func:`fresh_folder`
    names them) whose settings were recorded last: the run started or resumed last."""
    pattern = re.compile(rf"({'|'.join(map(re.escape, models))})(-[0-9]+)?")
    runs = [folder for folder in (root.iterdir() if root.is_dir() else ())
            if pattern.fullmatch(folder.name) and (folder / SETTINGS_FILE).is_file()]
    if not runs:
        raise RunFolderError(f"no run of {' or '.join(models)} in {root}/ to resume; name the "
                             f"run folder with --out")
    return max(runs, key=lambda folder: (folder / SETTINGS_FILE).stat().st_mtime_ns)


def record_settings(out: Path, settings: RunSettings) -> None:
    """Write ``run.json``: the settings' record, keys sorted (the format every earlier run
    folder holds, so that they resume)."""
    with atomic_file(out / SETTINGS_FILE) as f:
        f.write(json.dumps(settings.to_record(), indent=1, sort_keys=True).encode())


def recorded_settings(out: Path) -> RunSettings | None:
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
    return RunSettings.from_record(settings, f"{path}: unusable run settings")


__all__ = ["RunFolderError", "locked", "prepare", "record_settings", "recorded_settings",
           "resume_command", "holds_run", "fresh_folder", "latest_run", "RUN_FILES",
           "SETTINGS_FILE", "LOCK_FILE"]
