"""The disk cache never loads a library it did not write into a private folder itself.

The attack: another local user plants ``<cache>/<key>.so`` (keys are predictable) whose
constructor runs inside ``dlopen``. Here the planted library is harmless: its constructor
writes a marker file, and every test asserts the marker never appears.
"""

import os
import shutil
import stat
import subprocess
import warnings

import pytest

from dlsys import tvm_op as op
from dlsys.kernels import build

PLANTED_C = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted code ran", f); fclose(f); }
}
"""


@pytest.fixture
def planted(tmp_path):
    """A shared library whose constructor writes ``marker``; returns (library, marker)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the planted library")
    marker = tmp_path / "marker"
    source = tmp_path / "planted.c"
    source.write_text(PLANTED_C)
    library = tmp_path / "planted.so"
    subprocess.run([compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o",
                    str(library)], check=True, capture_output=True, timeout=60)
    return library, marker


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(folder))
    monkeypatch.setenv("DLSYS_DISK_CACHE", "1")
    build.clear_memory_cache()
    yield folder
    build.clear_memory_cache()


def _entry(cache):
    """Build a kernel once so that its entry exists; returns the entry's library path."""
    op.make_relu((4, 6), "llvm", "llvm", "relu")
    build.clear_memory_cache()
    (path,) = cache.glob("*.so")
    return path


def _plant(entry, library, forge_record: bool) -> None:
    # A new file, as the attacker's process would leave it; writing into the library this
    # process has mapped (it loads what it exports) would change its code under it.
    entry.unlink()
    shutil.copyfile(library, entry)
    if forge_record:
        from dlsys.kernels import disk_cache

        # The attacker also writes a record matching the planted bytes: only the folder's
        # ownership and mode can tell the entry is not dlsys's.
        with open(entry, "rb") as handle:
            digest = disk_cache._sha256(handle.fileno())
        entry.with_suffix(".sha256").write_text(
            disk_cache._record_text(entry.stem, entry.stat().st_size, digest))


def test_planted_library_in_a_private_folder_is_not_loaded(cache, planted):
    library, marker = planted
    entry = _entry(cache)
    _plant(entry, library, forge_record=False)
    op.make_relu((4, 6), "llvm", "llvm", "relu")
    assert not marker.exists()
    # Evicted and rebuilt: the entry is dlsys's library again.
    assert entry.read_bytes() != library.read_bytes()


def test_folder_others_can_write_is_refused(cache, planted):
    library, marker = planted
    entry = _entry(cache)
    os.chmod(cache, 0o777)
    _plant(entry, library, forge_record=True)
    with pytest.warns(RuntimeWarning, match="can be written by other users"):
        op.make_relu((4, 6), "llvm", "llvm", "relu")
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_folder_owned_by_another_user_is_refused(cache, planted):
    library, marker = planted
    entry = _entry(cache)
    _plant(entry, library, forge_record=True)
    os.chown(cache, 65534, 65534)
    with pytest.warns(RuntimeWarning, match="owned by uid 65534"):
        op.make_relu((4, 6), "llvm", "llvm", "relu")
    assert not marker.exists()


def test_folder_below_a_parent_others_can_write_is_refused(tmp_path, monkeypatch, planted):
    library, marker = planted
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(shared / "cache"))
    monkeypatch.setenv("DLSYS_DISK_CACHE", "1")
    entry = _entry(shared / "cache")
    _plant(entry, library, forge_record=True)
    # Without the sticky bit, anyone could rename our folder away and put theirs in its place.
    os.chmod(shared, 0o777)
    with pytest.warns(RuntimeWarning, match=f"parent {shared} can be written"):
        op.make_relu((4, 6), "llvm", "llvm", "relu")
    assert not marker.exists()
    from dlsys.kernels import disk_cache

    os.chmod(shared, 0o1777)  # sticky, as /tmp: only an entry's owner may rename it
    assert disk_cache.private_dir() == shared / "cache"


def test_ownership_is_checked_for_any_user(tmp_path):
    from dlsys.kernels import disk_cache

    folder = tmp_path / "mine"
    folder.mkdir(mode=0o700)
    assert disk_cache.unsafe_reason(folder, os.geteuid()) is None
    other = os.geteuid() + 1
    assert "owned by uid" in disk_cache.unsafe_reason(folder, other)


def test_refused_folder_warns_once_and_still_builds(cache):
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o775)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op.make_relu((4, 6), "llvm", "llvm", "relu")
        op.make_relu((5, 6), "llvm", "llvm", "relu")
    assert len([w for w in caught if "kernel cache folder" in str(w.message)]) == 1
    assert not list(cache.iterdir())


def test_new_folders_are_private(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(tmp_path / "a" / "b" / "kernels"))
    monkeypatch.setenv("DLSYS_DISK_CACHE", "1")
    build.clear_memory_cache()
    old_mask = os.umask(0o002)  # a umask that would make shared folders
    try:
        op.make_relu((4, 6), "llvm", "llvm", "relu")
    finally:
        os.umask(old_mask)
        build.clear_memory_cache()
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "kernels"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert list((tmp_path / "a" / "b" / "kernels").glob("*.so"))
