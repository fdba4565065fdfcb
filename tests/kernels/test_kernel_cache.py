"""The kernel cache: one object per key in a process, exported libraries across processes,
and a corrupt library rebuilt rather than fatal."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tvm

from dlsys import tvm_op as op
from dlsys.kernels import build


@pytest.fixture
def disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DLSYS_DISK_CACHE", "1")
    build.clear_memory_cache()
    yield tmp_path
    build.clear_memory_cache()


@pytest.fixture
def compile_count(monkeypatch):
    calls = []
    real = build.compile_module

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "compile_module", counting)
    return calls


def test_same_key_same_object_in_process(compile_count):
    first = op.make_elemwise_add((3, 11), "llvm", "llvm", "add_a")
    assert op.make_elemwise_add((3, 11), "llvm", "llvm", "add_b") is first
    assert op.make_elemwise_add([3, 11], "llvm", "llvm", "add_c") is first
    # Every part of the key makes a new kernel: shape, dtype, operator, constant.
    others = [op.make_elemwise_add((11, 3), "llvm", "llvm", "x"),
              op.make_elemwise_add((3, 11), "llvm", "llvm", "x", "float64"),
              op.make_elemwise_mul((3, 11), "llvm", "llvm", "x"),
              op.make_elemwise_add_by_const((3, 11), 1.0, "llvm", "llvm", "x"),
              op.make_elemwise_add_by_const((3, 11), 2.0, "llvm", "llvm", "x")]
    assert len({id(k) for k in [first, *others]}) == 6
    assert len(compile_count) <= 6


def test_schedule_mode_is_part_of_the_key(monkeypatch):
    tuned = op.make_relu((64, 300), "llvm", "llvm", "relu")
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    naive = op.make_relu((64, 300), "llvm", "llvm", "relu")
    assert naive is not tuned
    target = build.make_target("llvm")
    key = build.cache_key("injective", ("relu", (64, 300)), "float32", target)
    monkeypatch.setenv("DLSYS_SCHEDULE", "tuned")
    assert build.cache_key("injective", ("relu", (64, 300)), "float32", target) != key


def _build_and_check_script(cache: str, forbid_compile: bool) -> str:
    """A child process that builds kernels and checks them; it can be told any compile is a bug."""
    return textwrap.dedent(f"""
        import os, sys
        os.environ["DLSYS_CACHE_DIR"] = {cache!r}
        os.environ["DLSYS_DISK_CACHE"] = "1"
        import numpy as np, tvm
        from dlsys import tvm_op as op
        from dlsys.kernels import build
        if {forbid_compile!r}:
            def refuse(*args, **kwargs):
                print("COMPILED", args[2]); sys.exit(3)
            build.compile_module = refuse
        a = np.arange(12, dtype="float32").reshape(3, 4)
        out = tvm.runtime.empty((3, 4), "float32", tvm.cpu(0))
        op.make_elemwise_add((3, 4), "llvm", "llvm", "add")(
            tvm.runtime.tensor(a), tvm.runtime.tensor(a), out)
        assert np.array_equal(out.numpy(), a + a)
        mm = tvm.runtime.empty((3, 3), "float32", tvm.cpu(0))
        op.make_matrix_mul((3, 4), False, (3, 4), True, "llvm", "llvm", "mm")(
            tvm.runtime.tensor(a), tvm.runtime.tensor(a), mm)
        assert np.allclose(mm.numpy(), a @ a.T)
        print("OK")
    """)


def _run_child(script: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DLSYS_SCHEDULE"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)


def test_second_process_compiles_nothing(disk_cache):
    first = _run_child(_build_and_check_script(str(disk_cache), forbid_compile=False))
    assert first.returncode == 0, first.stderr
    assert len(list(disk_cache.glob("*.so"))) == 2
    second = _run_child(_build_and_check_script(str(disk_cache), forbid_compile=True))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "OK" in second.stdout


def test_child_with_an_empty_cache_must_compile(disk_cache):
    # The control for the test above: the refusing child does notice a compile.
    child = _run_child(_build_and_check_script(str(disk_cache), forbid_compile=True))
    assert child.returncode == 3 and "COMPILED" in child.stdout


def _replace(path, data: bytes) -> None:
    """Put ``data`` at the entry ``path`` as another process would: a new file. This process
    has the library there mapped (it loads what it exports), and writing into that file
    would change its code under it."""
    path.unlink()
    path.write_bytes(data)


@pytest.mark.parametrize("garbage", [b"", b"not a shared library\n" * 100,
                                     b"\x7fELF" + b"\0" * 60])
def test_corrupt_library_is_rebuilt(disk_cache, compile_count, garbage):
    shape = (5, 7)
    op.make_relu(shape, "llvm", "llvm", "relu")
    (path,) = disk_cache.glob("*.so")
    _replace(path, garbage)
    build.clear_memory_cache()
    kernel = op.make_relu(shape, "llvm", "llvm", "relu")
    assert compile_count == ["injective", "injective"]
    x = np.linspace(-1, 1, 35, dtype="float32").reshape(shape)
    out = tvm.runtime.empty(shape, "float32", tvm.cpu(0))
    kernel(tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), np.maximum(x, 0))
    # The broken entry was replaced by a loadable library, so the next process reuses it.
    assert path.read_bytes()[:4] == b"\x7fELF" and path.stat().st_size > 1000
    build.clear_memory_cache()
    op.make_relu(shape, "llvm", "llvm", "relu")
    assert len(compile_count) == 2


def test_disk_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DLSYS_DISK_CACHE", "0")
    op.make_relu((2, 9), "llvm", "llvm", "relu")
    assert not list(tmp_path.glob("*.so"))


def _relu_child(cache: str) -> str:
    """A child process that builds and checks one relu kernel through the disk cache."""
    return textwrap.dedent(f"""
        import os
        os.environ["DLSYS_CACHE_DIR"] = {cache!r}
        os.environ["DLSYS_DISK_CACHE"] = "1"
        import numpy as np, tvm
        from dlsys import tvm_op as op
        x = np.linspace(-1, 1, 35, dtype="float32").reshape(5, 7)
        out = tvm.runtime.empty((5, 7), "float32", tvm.cpu(0))
        op.make_relu((5, 7), "llvm", "llvm", "relu")(tvm.runtime.tensor(x), out)
        assert np.array_equal(out.numpy(), np.maximum(x, 0))
        print("OK")
    """)


def test_truncated_library_is_rebuilt_not_a_crash(disk_cache):
    # dlopen maps a truncated library's segments past the end of the file: the first access
    # kills the process with SIGBUS unless the entry is checked before it is loaded.
    first = _run_child(_relu_child(str(disk_cache)))
    assert first.returncode == 0, first.stderr
    (path,) = disk_cache.glob("*.so")
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    second = _run_child(_relu_child(str(disk_cache)))
    assert second.returncode == 0 and "OK" in second.stdout, (second.returncode, second.stderr)
    assert path.stat().st_size > len(whole) // 2


def _two_entries(disk_cache):
    """Build two relu kernels of different shapes; returns their entries' library paths."""
    op.make_relu((5, 7), "llvm", "llvm", "relu")
    (first,) = disk_cache.glob("*.so")
    op.make_relu((3, 3), "llvm", "llvm", "relu")
    (second,) = set(disk_cache.glob("*.so")) - {first}
    build.clear_memory_cache()
    return first, second


def _check_relu_5x7(kernel):
    x = np.linspace(-1, 1, 35, dtype="float32").reshape(5, 7)
    out = tvm.runtime.empty((5, 7), "float32", tvm.cpu(0))
    kernel(tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), np.maximum(x, 0))


@pytest.mark.parametrize("with_record", [False, True])
def test_another_kernels_library_under_a_key_is_evicted(disk_cache, compile_count, with_record):
    first, second = _two_entries(disk_cache)
    _replace(first, second.read_bytes())
    if with_record:  # the whole entry copied, record and all: the record names another key
        first.with_suffix(".sha256").write_bytes(second.with_suffix(".sha256").read_bytes())
    _check_relu_5x7(op.make_relu((5, 7), "llvm", "llvm", "relu"))
    assert len(compile_count) == 3
    # Replaced by its own library, which the next process loads without compiling.
    build.clear_memory_cache()
    _check_relu_5x7(op.make_relu((5, 7), "llvm", "llvm", "relu"))
    assert len(compile_count) == 3


def test_an_entry_that_is_a_directory_is_replaced(disk_cache, compile_count):
    op.make_relu((5, 7), "llvm", "llvm", "relu")
    (path,) = disk_cache.glob("*.so")
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")
    build.clear_memory_cache()
    _check_relu_5x7(op.make_relu((5, 7), "llvm", "llvm", "relu"))
    assert path.is_file() and len(compile_count) == 2


def test_abandoned_temporary_exports_are_swept(disk_cache):
    old = time.time() - 2 * 3600
    stale = [disk_cache / ".dlsys-tmp-k1l2m3n4.so", disk_cache / "tmpab_cd123.so"]
    fresh = disk_cache / ".dlsys-tmp-x9y8z7w6.so"  # perhaps a live process exporting now
    users = [disk_cache / "tmp_notes.so", disk_cache / "notes.txt"]  # not dlsys's names
    for path in [*stale, fresh, *users]:
        path.write_bytes(b"partial")
    for path in [*stale, *users]:
        os.utime(path, (old, old))
    op.make_relu((2, 3), "llvm", "llvm", "relu")
    assert not any(path.exists() for path in stale)
    assert fresh.exists() and all(path.exists() for path in users)


def test_a_new_kernel_runs_from_the_library_it_exported(disk_cache, compile_count,
                                                         monkeypatch):
    # Taking the function from the module just built would have LLVM compile it a second
    # time, in process; the exported library is already machine code.
    from dlsys.kernels import disk_cache as cache_module

    loaded = []
    real = cache_module._load_verified
    monkeypatch.setattr(cache_module, "_load_verified",
                        lambda path, symbol: loaded.append(path) or real(path, symbol))
    kernel = op.make_relu((5, 7), "llvm", "llvm", "relu")
    (path,) = disk_cache.glob("*.so")
    assert compile_count == ["injective"] and loaded == [path]
    _check_relu_5x7(kernel)


def test_kernels_nothing_holds_are_released(compile_count):
    """The in-process cache keeps a kernel while a caller holds it, or only its function
    (as an executor's plan does), and forgets it once nobody does."""
    build.clear_memory_cache()
    held = op.make_relu((4, 9), "llvm", "llvm", "relu")
    function_only = op.make_relu((4, 10), "llvm", "llvm", "relu").func
    op.make_relu((4, 11), "llvm", "llvm", "relu")  # dropped at once
    assert build.release_unused_kernels() == 1
    assert op.make_relu((4, 9), "llvm", "llvm", "relu") is held
    assert {k.func for k in build._memory_cache.values()} == {held.func, function_only}
    del held, function_only
    assert build.release_unused_kernels() == 2 and not build._memory_cache


def _entry_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".so", ".sha256"))


def test_disk_cache_is_bounded_least_recently_used_first(disk_cache, monkeypatch):
    """Past DLSYS_CACHE_MAX_MB the least recently used entries go first: loading an entry
    makes it recent again, and the entry just written always stays."""
    monkeypatch.setenv("DLSYS_CACHE_MAX_MB", "0.1")  # 104857 bytes: five relu kernels
    older, old = _two_entries(disk_cache)  # (5, 7) and (3, 3), then the memory cache cleared
    for path, age in [(older, 7200), (old, 3600)]:
        os.utime(path, (time.time() - age, time.time() - age))
    _check_relu_5x7(op.make_relu((5, 7), "llvm", "llvm", "relu"))  # a load: used now
    for rows in range(1, 12):
        op.make_relu((rows, 4), "llvm", "llvm", "relu")
        assert _entry_bytes(disk_cache) <= 0.1 * 2**20
        newest = max(disk_cache.glob("*.so"), key=lambda p: p.stat().st_mtime)
        if not old.exists():
            break
    assert not old.exists() and older.exists(), "the entry used longest ago goes first"
    assert not old.with_suffix(".sha256").exists()
    assert newest.exists()
    assert {p.stem for p in disk_cache.glob("*.so")} == {
        p.stem for p in disk_cache.glob("*.sha256")}


def test_bad_disk_cache_bound_is_named(disk_cache, monkeypatch):
    from dlsys.errors import ArgumentError

    for value in ["abc", "0", "-5", "nan"]:
        monkeypatch.setenv("DLSYS_CACHE_MAX_MB", value)
        with pytest.raises(ArgumentError, match="DLSYS_CACHE_MAX_MB"):
            op.make_relu((3, 13), "llvm", "llvm", "relu")
