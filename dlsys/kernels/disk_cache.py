"""The on-disk kernel cache: shared libraries exported by one process, loaded by the next.

Loading a shared library runs code: its constructors run inside ``dlopen``, before dlsys can
look at what the library exports. So the cache loads nothing it did not write itself:

- The directory must be private: a real directory owned by this user that nobody else can
  write to, below parents that only this user or root can change (a sticky, world-writable
  parent such as ``/tmp`` is allowed: others cannot rename or remove what we own there). Any
  other directory is refused with one warning, and kernels are then compiled in memory.
  dlsys creates the directories it needs with mode 0700.
- Each entry ``<key>.so`` has a record ``<key>.sha256`` written by dlsys beside it (the key,
  the size and the sha256 of the library's bytes). A library is hashed before it is loaded,
  and loaded only if it matches its record; anything else (no record, another library, a
  truncated file, a directory) is evicted and rebuilt, never loaded.
- Temporary files carry dlsys's own prefix, so a compile killed mid-export leaves a file that
  a later process recognises and removes once it is clearly abandoned.

The folder is bounded in size: ``$DLSYS_CACHE_MAX_MB`` MiB of entries (default 128), the
least recently used evicted first (a load touches its library). Entries weigh 18 to 80 KB,
median 25 KB (the 73 in this machine's cache after the tests; the 82 kernels an MLP session
builds for 40 batch sizes take 2.1 MB), so the default holds about 5,000 kernels. Entries
written for older dlsys sources or another TVM, whose keys no process asks for any more,
are the first to go.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import warnings
from pathlib import Path

import tvm

from dlsys.errors import ArgumentError

CACHE_ENV_VAR = "DLSYS_CACHE_DIR"
SIZE_ENV_VAR = "DLSYS_CACHE_MAX_MB"
DEFAULT_MAX_MB = 128
# Evicting down to this fraction of the bound leaves room for many saves before the next
# eviction, each of which reads the whole folder (8 us a file here, 80 ms for 5,000 entries).
_LOW_WATER = 0.9
_ENTRY = re.compile(r"([0-9a-f]{32})\.(so|sha256)")
TEMP_PREFIX = ".dlsys-tmp-"
# Versions before this module named their temporary exports with mkstemp's defaults.
_LEGACY_TEMP = re.compile(r"tmp[a-z0-9_]{8}\.so")
# A compile and export take seconds; a temporary file untouched for an hour was abandoned by
# a killed process, while a younger one may still be being written by a live one.
STALE_SECONDS = 3600
# A record is three short lines; anything longer is not one of ours.
_RECORD_MAX_BYTES = 4096
_CHUNK = 1 << 20

_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()
_swept: set[str] = set()
# Libraries this process has opened. The dynamic loader hands back the library it already
# mapped for a path it has seen, even when the file there has been replaced since.
_opened: set[str] = set()
# Bytes of entries in each folder as this process last counted them, plus what it saved since.
_usage: dict[str, int] = {}


def max_bytes() -> int:
    """The bound on the cache folder's entries: ``$DLSYS_CACHE_MAX_MB`` MiB, default 128."""
    text = os.environ.get(SIZE_ENV_VAR, "").strip()
    if not text:
        return DEFAULT_MAX_MB << 20
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = float("nan")
    if not 0 < megabytes < float("inf"):  # also refuses nan
        raise ArgumentError(f"{SIZE_ENV_VAR} must be a positive number of MiB for the kernel "
                            f"cache folder, got {text!r}")
    return int(megabytes * (1 << 20))


def configured_dir() -> Path:
    """The folder the user named: ``$DLSYS_CACHE_DIR``, else ``~/.cache/dlsys/kernels``."""
    root = os.environ.get(CACHE_ENV_VAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "dlsys" / "kernels"


def unsafe_reason(directory: Path, uid: int) -> str | None:
    """Why ``directory`` (absolute, symlinks resolved) must not hold code we load, or None.

    As ssh checks ``~/.ssh``: the directory must be ours and writable by nobody else, and each
    parent must belong to us or root and be writable by nobody else, unless it is sticky.
    """
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != uid:
        return f"{directory} is owned by uid {info.st_uid}, not by this user (uid {uid})"
    if info.st_mode & 0o022:
        return (f"{directory} can be written by other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o})")
    for parent in directory.parents:
        info = os.stat(parent)
        if info.st_uid not in (uid, 0):
            return (f"its parent {parent} is owned by uid {info.st_uid}, who could replace "
                    "the cache")
        # In a sticky directory only a file's owner may rename or remove it.
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return (f"its parent {parent} can be written by other users "
                    f"(mode {stat.S_IMODE(info.st_mode):04o})")
    return None


def _make_private_dirs(path: Path) -> None:
    # os.makedirs gives intermediate folders the default mode; every folder made here is 0700.
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)


def private_dir() -> Path | None:
    """The cache folder, made (0700) if missing, resolved and checked; None if it is unsafe.

    An unsafe or unusable folder is reported by one warning per process and folder; dlsys
    then works without it.
    """
    named = configured_dir()
    try:
        _make_private_dirs(Path(os.path.abspath(named)))
        # Resolved once, so a symlink swapped later cannot redirect what we load.
        path = Path(os.path.realpath(named))
        reason = unsafe_reason(path, os.geteuid())
    except OSError as e:
        path, reason = named, f"cannot use it: {e.strerror or e}"
    if reason is not None:
        _warn_once(named, reason)
        return None
    _sweep_once(path)
    return path


def _warn_once(named: Path, reason: str) -> None:
    with _lock:
        if (str(named), reason) in _warned:
            return
        _warned.add((str(named), reason))
    warnings.warn(f"not using the dlsys kernel cache folder {named}: {reason}; kernels are "
                  "compiled in memory and no tuning log is kept", RuntimeWarning, stacklevel=3)


def _sweep_once(directory: Path) -> None:
    with _lock:
        if str(directory) in _swept:
            return
        _swept.add(str(directory))
    remove_stale_temp_files(directory)


def is_dlsys_temp_file(name: str) -> bool:
    """Whether ``name`` is one of the temporary files dlsys makes in its cache folder."""
    return name.startswith(TEMP_PREFIX) or _LEGACY_TEMP.fullmatch(name) is not None


def remove_stale_temp_files(directory: Path, max_age: float = STALE_SECONDS) -> None:
    """Delete dlsys's own temporary files in ``directory`` untouched for ``max_age`` seconds."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if (is_dlsys_temp_file(entry.name) and entry.is_file(follow_symlinks=False)
                        and now - entry.stat(follow_symlinks=False).st_mtime > max_age):
                    os.unlink(entry.path)


def temp_file(directory: Path, suffix: str) -> tuple[int, str]:
    """A new private (0600) temporary file in ``directory``, named so the sweep knows it."""
    return tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)


def _paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"{key}.so", directory / f"{key}.sha256"


def _record_text(key: str, size: int, digest: str) -> str:
    return f"key {key}\nsize {size}\nsha256 {digest}\n"


def _evict(path: Path) -> None:
    """Remove an entry file whatever it is; a directory in its place goes too."""
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def _read_record(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = handle.read(_RECORD_MAX_BYTES + 1)
    if len(data) > _RECORD_MAX_BYTES:
        return None
    return data.decode("ascii", errors="replace")


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _digest_if_ours(fd: int) -> str | None:
    """The sha256 of the open library, or None if it is not a file this user could have written
    and nobody else could have changed."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    return _sha256(fd)


def load(directory: Path, key: str, symbol: str):
    """The function ``symbol`` of entry ``key`` if it is intact and ours, else None.

    A bad entry is evicted, so the caller's rebuild replaces it.
    """
    lib_path, record_path = _paths(directory, key)
    if not os.path.lexists(lib_path):
        _evict(record_path)
        return None
    record = _read_record(record_path)
    try:
        fd = os.open(lib_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # a symlink, or unreadable
        fd = None
    try:
        if fd is not None and record is not None:
            opened = os.fstat(fd)
            digest = _digest_if_ours(fd)
            # The path must still name the file just hashed; only this user could swap it.
            now = os.stat(lib_path, follow_symlinks=False)
            if (digest is not None and record == _record_text(key, opened.st_size, digest)
                    and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)):
                func = _load_verified(lib_path, symbol)
                if func is not None:
                    with contextlib.suppress(OSError):
                        os.utime(fd)  # used now: the last entry the size bound evicts
                    return func
    except OSError:
        pass  # vanished or unreadable meanwhile: evicted below like any bad entry
    finally:
        if fd is not None:
            os.close(fd)
    _evict(lib_path)
    _evict(record_path)
    return None


def opened_before(directory: Path, key: str) -> bool:
    """Whether this process has opened entry ``key``'s library (a later ``load`` would get
    the library mapped then, not the file there now)."""
    with _lock:
        return str(_paths(directory, key)[0]) in _opened


def _load_verified(path: Path, symbol: str):
    with _lock:
        _opened.add(str(path))
    try:
        return tvm.runtime.load_module(str(path))[symbol]
    except Exception:  # noqa: BLE001 - an intact entry TVM cannot load (TVM built differently)
        return None


def save(lib, directory: Path, key: str) -> None:
    """Export ``lib`` as entry ``key`` with its record; a failure leaves no usable entry."""
    lib_path, record_path = _paths(directory, key)
    leftovers = []
    try:
        fd, tmp_lib = temp_file(directory, ".so")
        os.close(fd)
        leftovers.append(tmp_lib)
        lib.export_library(tmp_lib)
        fd = os.open(tmp_lib, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size, digest = os.fstat(fd).st_size, _sha256(fd)
        finally:
            os.close(fd)
        fd, tmp_record = temp_file(directory, ".sha256")
        leftovers.append(tmp_record)
        with os.fdopen(fd, "w") as handle:
            handle.write(_record_text(key, size, digest))
        # The library first: a reader that sees it before its new record evicts and rebuilds;
        # a library left without a record (a crash between the two) is evicted the same way.
        os.replace(tmp_lib, lib_path)
        os.replace(tmp_record, record_path)
        leftovers.clear()
        _keep_bound(directory, key, size + len(_record_text(key, size, digest)))
    except Exception:  # noqa: BLE001, S110 - the cache is an optimisation; compiling is correct
        pass
    finally:
        for leftover in leftovers:
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def _entries(directory: Path) -> dict[str, tuple[float, int]]:
    """``key -> (last use, bytes)`` of the folder's entries (its library's time, or its
    record's where the library is missing)."""
    entries: dict[str, tuple[float, int]] = {}
    with contextlib.suppress(OSError), os.scandir(directory) as found:
        for item in found:
            match = _ENTRY.fullmatch(item.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                info = item.stat(follow_symlinks=False)
                used, size = entries.get(match[1], (0.0, 0))
                if match[2] == "so" or not used:
                    used = info.st_mtime
                entries[match[1]] = (used, size + info.st_size)
    return entries


def _keep_bound(directory: Path, saved: str, added: int) -> None:
    """After entry ``saved`` (``added`` bytes) was written: if the folder may be over
    ``max_bytes``, count it again and evict the least recently used entries (never
    ``saved``) down to ``_LOW_WATER`` of the bound. Other processes' saves are noticed at
    the next count, so the folder stays within the bound plus what each process saved since
    it last counted."""
    limit, name = max_bytes(), str(directory)
    with _lock:
        known = _usage.get(name)
        if known is not None and known + added <= limit:
            _usage[name] = known + added
            return
    entries = _entries(directory)
    total = sum(size for _, size in entries.values())
    if total > limit:
        for key, (_, size) in sorted(entries.items(), key=lambda item: item[1][0]):
            if total <= limit * _LOW_WATER:
                break
            if key != saved:
                for path in _paths(directory, key):
                    _evict(path)
                total -= size
    with _lock:
        _usage[name] = total
