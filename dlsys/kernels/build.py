"""Turning a compute definition plus a schedule into a callable kernel, once.

``build_kernel`` validates the arguments every builder shares (shapes, dtype, target),
then looks the kernel up in an in-process cache, then in an on-disk cache of exported
shared libraries, and only then compiles it. The cache key holds everything that decides
the generated code: kernel kind and parameters, dtype, target, schedule mode, TVM's version
and the source of dlsys's compute and schedule modules.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import tvm

from dlsys.errors import ArgumentError, ArgumentTypeError, DtypeError, ShapeError
from dlsys.kernels import disk_cache, tuning
from dlsys.kernels import schedule as schedules
from dlsys.kernels.common.compute import prim_func

SUPPORTED_DTYPES = ("float32", "float64")
SUPPORTED_TARGETS = ("llvm", "cuda")


def make_target(tgt: str | tvm.target.Target, tgt_host: str | None = "llvm") -> tvm.target.Target:
    """A TVM target from the course's strings ``"llvm"``/``"cuda"``; llvm is tuned to this CPU."""
    if isinstance(tgt, tvm.target.Target):
        if tgt.kind.name not in SUPPORTED_TARGETS:
            raise ArgumentError(f"tgt must be one of {SUPPORTED_TARGETS}, got {tgt}")
        return tgt
    # Checked before the cached constructor, which could not even hash a list.
    if not isinstance(tgt, str) or not tgt.split() or tgt.split()[0] not in SUPPORTED_TARGETS:
        raise ArgumentError(f"tgt must be one of {SUPPORTED_TARGETS}, got {tgt!r}")
    if len(tgt.split()) > 1:
        # dlsys chooses the CPU and its features itself; an option such as -mtriple would be
        # ignored, and code for another machine silently built for this one.
        raise ArgumentError(f"tgt takes no options, only {SUPPORTED_TARGETS}: got {tgt!r}")
    if tgt_host is not None and not (isinstance(tgt_host, str) and tgt_host == "llvm"):
        raise ArgumentError(f"tgt_host must be 'llvm' or None, got {tgt_host!r}")
    override = _llvm_target.get()
    if override is not None and tgt.split()[0] == "llvm":
        return override
    return _make_target(tgt.split()[0])


# The CPU target "llvm" means inside ``llvm_target`` (None: this machine's CPU).
_llvm_target: ContextVar[tvm.target.Target | None] = ContextVar("llvm_target", default=None)


@contextmanager
def llvm_target(target: tvm.target.Target) -> Iterator[None]:
    """Build every CPU kernel, inside the block, for ``target`` instead of this machine's
    CPU: ``dlsys.deploy`` compiles a library for a portable baseline (x86-64-v3) so. The
    target must run here too, since the program's constant values are computed by running
    its kernels."""
    token = _llvm_target.set(target)
    try:
        yield
    finally:
        _llvm_target.reset(token)


@cache
def _make_target(kind: str) -> tvm.target.Target:
    host = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    if kind == "llvm":
        return tvm.target.Target(host)
    return tvm.target.Target({"kind": "cuda"}, host=host)


def check_shape(name: str, shape: Sequence[int], ndim: int | None = None) -> tuple[int, ...]:
    """Validate one shape argument; the error names the argument."""
    # A string is iterable, and a float or bool converts to int silently: refuse all three.
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)):
        raise ArgumentTypeError(f"{name} must be a tuple of ints, got {shape!r}")
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_))
               for d in shape):
        raise ArgumentTypeError(f"{name} must hold integers, got {shape!r}")
    dims = tuple(int(d) for d in shape)
    if not dims:
        raise ShapeError(f"{name} must have at least one dimension, got {dims}")
    if any(d <= 0 for d in dims):
        raise ShapeError(f"{name} must have positive dimensions, got {dims}")
    if ndim is not None and len(dims) != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got {dims}")
    # TVM indexes buffers with int32 unless a dimension needs more: a dimension past int32
    # turns some index arithmetic int64 and some not (a 2**63 one does not even convert), and
    # int32 dimensions whose product passes it overflow the flat index silently.
    max_elements = 2**31 - 1
    elements = math.prod(dims)
    if elements > max_elements:
        raise ShapeError(f"{name} {dims} has {elements} elements; dlsys kernels index with "
                         f"int32 and take at most {max_elements} (2**31 - 1)")
    return dims


def check_dtype(dtype) -> str:
    """The dtype's name, from a string or a ``numpy.dtype`` (both of which TE accepts)."""
    name = dtype.name if isinstance(dtype, np.dtype) else dtype
    if not isinstance(name, str) or name not in SUPPORTED_DTYPES:
        raise DtypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    return name


class Kernel:
    """A compiled kernel: call it with TVM tensors, the outputs last, written in place.

    ``func`` is the raw packed function the executor calls in its run loop; calling the
    ``Kernel`` itself first checks the arguments' shapes, dtypes and device, for direct users,
    and names the offending argument by its tensor name in the compute definition.
    ``source(symbol)``, where known, rebuilds the scheduled IRModule compiled into ``func``
    under the function name ``symbol`` (``dlsys.deploy`` links many kernels into one library).
    """

    __slots__ = ("func", "name", "arg_names", "arg_shapes", "dtype", "device_type", "source",
                 "key")

    def __init__(self, func, name: str, arg_shapes: list[tuple[int, ...]], dtype: str,
                 arg_names: list[str] | None = None, device_type: int | None = None,
                 source: Callable[[str], tvm.IRModule] | None = None, key: str = ""):
        self.func = func
        self.source = source
        # What the generated code depends on (``cache_key``): equal keys, equal kernels.
        self.key = key
        self.name = name
        self.arg_shapes = arg_shapes
        self.arg_names = arg_names or [f"#{i}" for i in range(len(arg_shapes))]
        self.dtype = dtype
        self.device_type = device_type

    def __call__(self, *args) -> None:
        if len(args) != len(self.arg_shapes):
            raise ArgumentTypeError(f"kernel {self.name} takes {len(self.arg_shapes)} tensors "
                                    f"{tuple(self.arg_names)}, got {len(args)}")
        for position, (arg, shape) in enumerate(zip(args, self.arg_shapes)):
            label = f"kernel {self.name}: argument {position} ({self.arg_names[position]})"
            if not isinstance(arg, tvm.runtime.Tensor):
                raise ArgumentTypeError(f"{label} must be a tvm.runtime.Tensor, "
                                        f"got {type(arg).__name__}")
            if tuple(arg.shape) != shape:
                raise ShapeError(f"{label} has shape {tuple(arg.shape)}, expected {shape}")
            if str(arg.dtype) != self.dtype:
                raise DtypeError(f"{label} has dtype {arg.dtype}, expected {self.dtype}")
            if self.device_type is not None and arg.device.dlpack_device_type() != self.device_type:
                raise ArgumentError(f"{label} lives on {arg.device}, but the kernel runs on "
                                    f"device type {self.device_type}")
        self.func(*args)

    def __repr__(self) -> str:
        return f"Kernel({self.name}, {self.arg_shapes}, {self.dtype})"


# Kernels built in this process, kept while anything besides this table uses them: an
# executor's plan holds its kernels' functions, a caller the Kernel itself. One nobody holds
# is forgotten (``release_unused_kernels``), and its library unmapped, so a session cycling
# through many shapes keeps only what its live plans run; asked for again, it comes back
# from the disk cache in about a millisecond.
_memory_cache: dict[str, Kernel] = {}
_lock = threading.Lock()


def _references(table: dict, key: str) -> int:
    kernel = table[key]
    return sys.getrefcount(kernel) + sys.getrefcount(kernel.func)


# What ``_references`` counts for a kernel that only its table holds, measured the same way
# (the count includes the call's own temporary references, which vary between interpreters).
_ALONE = _references({"probe": Kernel(object(), "probe", [], "float32")}, "probe")


def release_unused_kernels() -> int:
    """Forget the kernels that nothing outside the in-process cache holds (neither the
    ``Kernel`` nor its function); returns how many. Run at every kernel built; a plan
    dropped in a reference cycle is noticed once Python's collector has freed it."""
    with _lock:
        unused = [key for key in _memory_cache if _references(_memory_cache, key) <= _ALONE]
        for key in unused:
            del _memory_cache[key]
    return len(unused)


def cache_dir() -> Path:
    """The kernel cache folder the user named: ``$DLSYS_CACHE_DIR``, else
    ``~/.cache/dlsys/kernels``; ``disk_cache.private_dir`` decides whether it is used."""
    return disk_cache.configured_dir()


def disk_cache_enabled() -> bool:
    return os.environ.get("DLSYS_DISK_CACHE", "1") != "0"


KERNELS_ROOT = Path(__file__).parent


def code_files() -> list[Path]:
    """The modules that decide generated code: every ``*.py`` of ``dlsys/kernels`` and of its
    family folders (the tuning tables are data, and never invalidate a kernel)."""
    return sorted(KERNELS_ROOT.rglob("*.py"))


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Hash of ``code_files``, each under its path (a module moved between folders changes
    the hash too), so editing them invalidates the cache."""
    digest = hashlib.sha256(tvm.__version__.encode())
    for path in code_files():
        digest.update(path.relative_to(KERNELS_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(kind: str, params: tuple, dtype: str, target: tvm.target.Target) -> str:
    text = repr((kind, params, dtype, str(target), schedules.schedule_mode(), _code_fingerprint()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _unscheduled_module(inputs: list, outputs: list, func_name: str,
                        target: tvm.target.Target) -> tvm.IRModule:
    # CPU kernels read their inputs wherever they lie, so that the executor can hand them a
    # caller's numpy array without copying it (GPU inputs are always dlsys's own copies).
    prim = prim_func(inputs, outputs, inputs_aligned=target.kind.name != "llvm")
    return tvm.IRModule({func_name: prim.with_attr("global_symbol", func_name)})


def scheduled_module(inputs: list, outputs: list, kind: str, target: tvm.target.Target,
                     func_name: str) -> tvm.IRModule:
    """The IRModule that ``compile_module`` compiles: the compute with its schedule applied."""
    return schedules.apply_schedule(_unscheduled_module(inputs, outputs, func_name, target),
                                    kind, target)


def compile_module(inputs: list, outputs: list, kind: str, target: tvm.target.Target,
                   func_name: str):
    """Compile one compute definition with the schedule of ``kind``; returns the module."""
    return tvm.tirx.build(scheduled_module(inputs, outputs, kind, target, func_name), target=target)


def clear_memory_cache() -> None:
    """Forget every kernel built in this process (the disk cache stays)."""
    with _lock:
        _memory_cache.clear()


def build_kernel(kind: str, params: tuple, define: Callable[[], tuple[list, list]],
                 dtype: str, tgt, tgt_host, func_name: str) -> Kernel:
    """The cached kernel for ``define`` (a thunk returning TE inputs and outputs)."""
    dtype = check_dtype(dtype)
    target = make_target(tgt, tgt_host)
    if not isinstance(func_name, str) or not func_name.isidentifier():
        raise ArgumentError(f"func_name must be an identifier, got {func_name!r}")
    key = cache_key(kind, params, dtype, target)
    # Read here so that a bad value is named, not taken for a schedule's refusal (the
    # schedules fall back when an error is raised inside them).
    tuning.search_budget_s()
    with _lock:
        cached = _memory_cache.get(key)
    if cached is not None:
        return cached
    release_unused_kernels()
    inputs, outputs = define()
    arg_shapes = [tuple(int(d) for d in t.shape) for t in inputs + outputs]
    arg_names = [t.op.name for t in inputs + outputs]
    # The symbol in an exported library is fixed at build time, so the disk cache builds
    # every kernel under one internal name and hands out the function whatever func_name was.
    symbol = "dlsys_kernel"
    func = None
    directory = None
    if disk_cache_enabled() and target.kind.name == "llvm":
        disk_cache.max_bytes()  # a bad value named here, not swallowed by a failed save
        directory = disk_cache.private_dir()
    if directory is not None:
        unscheduled = _unscheduled_module(inputs, outputs, symbol, target)
        decisions = schedules.schedule_decisions(unscheduled, kind, target)
        disk_key = cache_key(kind, params + (decisions,), dtype, target)
        func = disk_cache.load(directory, disk_key, symbol)
    if func is None:
        lib = compile_module(inputs, outputs, kind, target, symbol)
        if directory is not None:
            opened = disk_cache.opened_before(directory, disk_key)  # e.g. evicted just now
            disk_cache.save(lib, directory, disk_key)
            # The exported library is machine code already: loading it takes under a
            # millisecond, where taking the function from ``lib`` has LLVM compile the
            # module a second time, in process (25 ms for an elementwise kernel, znver4).
            if not opened:
                func = disk_cache.load(directory, disk_key, symbol)
        if func is None:
            func = lib[symbol]

    def source(name: str) -> tvm.IRModule:
        return scheduled_module(*define(), kind, target, name)

    kernel = Kernel(func, func_name, arg_shapes, dtype, arg_names,
                    device_for(target).dlpack_device_type(), source, key)
    with _lock:
        _memory_cache[key] = kernel
    return kernel


def device_for(target: tvm.target.Target):
    return tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)


def empty(shape: Sequence[int], dtype: str = "float32", device=None) -> tvm.runtime.Tensor:
    """A new uninitialised TVM tensor (used by the executor's memory plan and by tests)."""
    return tvm.runtime.empty(tuple(shape), dtype, device or tvm.cpu(0))


def to_tensor(array: np.ndarray, device=None) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.ascontiguousarray(array), device or tvm.cpu(0))
