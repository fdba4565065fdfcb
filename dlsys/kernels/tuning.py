"""Tuning logs: per-shape schedule parameters found by measurement, kept as JSON.

Two tables are consulted: the user's log inside the dlsys cache folder, which grows as
searches run on this machine, and a table shipped in ``dlsys/kernels/tuned/`` with known-good
entries for the models' shapes (``lookup`` says which wins). Keys name the CPU, so a log copied
to another machine is simply not used there. Both files are data, not code: build.py hashes only
the ``*.py`` files here, so a new log entry never invalidates compiled kernels.

A log that cannot be read or parsed is treated as empty (and replaced on the next write);
a tuning log is an optimisation, never a reason to fail.
"""

from __future__ import annotations

import json
import os
import threading
from functools import cache, lru_cache
from pathlib import Path

import tvm

from dlsys.errors import ArgumentError
from dlsys.kernels import disk_cache

LOG_VERSION = 1
SHIPPED_DIR = Path(__file__).parent / "tuned"
# Far above any real log (an entry is about 150 bytes), far below a memory problem.
MAX_LOG_BYTES = 16 << 20

_lock = threading.Lock()


def tuning_log_path(kind: str) -> Path | None:
    """The user's log for ``kind``, inside the kernel cache folder (``$DLSYS_CACHE_DIR``).

    None when that folder is not private: a log decides how kernels are built, so it is read
    only from a folder nobody else can write to.
    """
    directory = disk_cache.private_dir()
    return directory / f"{kind}_tuning.json" if directory is not None else None


@lru_cache(maxsize=1)
def system_cpu() -> str:
    """The CPU name LLVM tunes for (``znver3``, ``skylake-avx512``...); part of every key."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def tuning_enabled() -> bool:
    """``DLSYS_TUNE=0`` skips every search and uses heuristic parameters instead."""
    return os.environ.get("DLSYS_TUNE", "1").strip() not in ("0", "false", "no", "off")


# Seconds of first-use search one process may spend (``DLSYS_TUNE_BUDGET``). A search costs
# 0.5-0.7 s per shape, mostly compiling its candidates: searching the MLP's shapes put the
# first batch 8.1 s after start on a CPU without a shipped table (2.5 s with one; znver4).
# A search starts only if it should end within the budget, judged by the searches before
# it. Past that a shape gets the heuristic tiles (3-6 % slower on that model, and often the
# very tiles a search picks), unlogged, so the next process searches it: the log fills over
# a few runs, and no start waits for all of it.
DEFAULT_SEARCH_BUDGET_S = 1.5
_search_seconds_spent = 0.0
_searches_done = 0


def search_budget_s() -> float:
    text = os.environ.get("DLSYS_TUNE_BUDGET", "").strip()
    if not text:
        return DEFAULT_SEARCH_BUDGET_S
    try:
        budget = float(text)
    except ValueError:
        budget = float("nan")
    if not budget >= 0:  # also refuses nan
        raise ArgumentError(f"DLSYS_TUNE_BUDGET must be a number of seconds of search per "
                            f"process (0 or more, inf for no limit), got {text!r}")
    return budget


def search_allowed() -> bool:
    """Whether a first-use search may start now: tuning is on, and a search as long as the
    mean of this process's searches so far still ends within the budget."""
    if not tuning_enabled():
        return False
    with _lock:
        spent, done = _search_seconds_spent, _searches_done
    return spent + (spent / done if done else 0.0) < search_budget_s()


def spend_search_time(seconds: float) -> None:
    global _search_seconds_spent, _searches_done
    with _lock:
        _search_seconds_spent += seconds
        _searches_done += 1


def _read_entries(path: Path | None) -> dict[str, dict]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_LOG_BYTES + 1)
        if len(text) > MAX_LOG_BYTES:
            return {}
        data = json.loads(text)
    except (OSError, ValueError, RecursionError):
        # json recurses once per nesting level: a deeply nested file is corrupt, not a crash.
        return {}
    if not isinstance(data, dict) or data.get("version") != LOG_VERSION:
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {key: value for key, value in entries.items()
            if isinstance(key, str) and isinstance(value, dict)}


@cache
def _shipped_entries(kind: str) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for path in sorted(SHIPPED_DIR.glob(f"{kind}_*.json")):
        entries.update(_read_entries(path))
    return entries


def lookup(kind: str, key: str) -> dict | None:
    """The logged record for ``key``: the user's log first, then the shipped table.

    Where both hold the key and both say how fast their winner ran, the faster one: a
    search timed while the machine was busy logs a winner that is only the least disturbed
    (seen on this project's VM: 1 GFLOPS entries hiding the table's 140), and a shipped
    figure was measured quiet on the same CPU model. An entry without a figure is a choice
    the user wrote by hand, and it stands.
    """
    with _lock:
        record = _read_entries(tuning_log_path(kind)).get(key)
    shipped = _shipped_entries(kind).get(key)
    if record is None or (shipped is not None and
                          _gflops(shipped) > _gflops(record) > 0):
        record = shipped
    return dict(record) if record is not None else None


def _gflops(record: dict) -> float:
    value = record.get("gflops")
    return float(value) if type(value) in (int, float) and value == value else 0.0


def record(kind: str, key: str, value: dict) -> None:
    """Add or replace one entry of the user's log, atomically (a crash never leaves half a file).

    Entries written meanwhile by another process are kept unless they share the key; a
    corrupt log is replaced by one holding only the entries that could be read.
    """
    path = tuning_log_path(kind)
    if path is None:
        return  # no private folder: the search's result lives in this process only
    with _lock:
        entries = _read_entries(path)
        entries[key] = value
        text = json.dumps({"version": LOG_VERSION, "entries": entries}, indent=1, sort_keys=True)
        tmp = None
        try:
            # Private (0600) like the folder, and named so a killed writer's file is swept.
            fd, tmp = disk_cache.temp_file(path.parent, ".json")
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except OSError:
            # A read-only cache directory costs a search per process, not a failure.
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
