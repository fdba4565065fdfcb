"""One native call per run: a program's kernel calls, in order, as one host function.

The executor's run loop crosses from Python into native code once per kernel: about 0.2 us
per call of Python's own work, plus building each call's arguments, which for a small model
at batch 1 costs as much as its kernels. Here TVM compiles the loop itself: a host
function (``entry_function``) that takes the buffers a run touches (the memory plan's
storage, the constants computed ahead, each placeholder's tensor) and calls every kernel
with views of them, built on the stack in native code. A run is then one call from Python
(``NativeRun``), and rebinding a feed replaces one argument of that call.

The runtime knows no operator: the host function calls kernels by name, with the views the
program's memory plan gave each argument, whatever the kernels compute. Kernels are found
through TVM's global function table (``NativeRun`` registers this plan's kernels there under
names of its own, and removes them when the plan is dropped); a library exported for
deployment imports them instead (``dlsys.deploy``).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx

from dlsys.errors import ArgumentError

ENTRY_SYMBOL = "dlsys_run"
# Fields of a DLTensor as TVM's tvm_struct_get numbers them (its TVMStructFieldKind).
DLTENSOR_DATA = 1
DLTENSOR_BYTE_OFFSET = 8
DLPACK_CPU = 1  # DLPack's device type of the CPU (kDLCPU)


@dataclass(frozen=True)
class ArgumentView:
    """One kernel argument: ``shape`` elements of ``dtype`` at element ``offset`` of the
    entry's buffer number ``buffer``."""

    buffer: int
    offset: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class KernelCall:
    """One kernel call of the run: the kernel's name (global, or in an imported module) and
    its arguments, inputs then outputs."""

    symbol: str
    args: tuple[ArgumentView, ...]


@dataclass(frozen=True)
class BufferParam:
    """One buffer the entry takes: the shape and dtype it must be given."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class IdCheck:
    """Ids the entry checks before any call: the ``count`` integers of buffer ``buffer``
    must each lie in every one of ``ranges``, ``(start, stop, also)``: ``[start, stop)`` or
    one of ``also`` (``graph.IndexBounds``)."""

    buffer: int
    count: int
    ranges: tuple[tuple[int, int, tuple[int, ...]], ...]


@dataclass
class LoweredRun:
    """A plan's run as data: the buffers it touches and each kernel call as views of them,
    what the native run loop compiles and what ``dlsys.compile`` writes into a library.

    Buffers are numbered: each placeholder's tensor first (``placeholders``, in order), then
    the memory plan's ``storage`` buffers, then the buffers of the constant values computed
    ahead. ``functions[i]`` is the packed function of ``calls[i]``; the calls before
    ``first_per_run_call`` compute the constant values. ``outputs``: where each evaluated
    node's value lies after a run.
    """

    placeholders: list
    buffers: list
    storage: int
    functions: list
    calls: list[KernelCall]
    first_per_run_call: int
    outputs: list[ArgumentView]


def lower_calls(calls: Sequence[tuple], placeholder_slots: dict, placeholder_tensors: dict,
                fixed: Sequence, outputs: Sequence, storage: int,
                first_per_run_call: int) -> LoweredRun:
    """Describe ``calls`` (``(function, argument tensors)``) as views of buffers.

    ``placeholder_slots`` maps each placeholder to the ``(call, position, shape)`` slots
    that read its tensor (``placeholder_tensors``), which a run may rebind; every other
    argument lies in one of the ``fixed`` buffers, found by its address. ``outputs``: each
    evaluated value, a tensor or ``(placeholder, shape)``.
    """
    placeholders = list(placeholder_tensors)
    buffer_of = {p: i for i, p in enumerate(placeholders)}
    slot_buffer = {(call, position): buffer_of[p] for p, slots in placeholder_slots.items()
                   for call, position, _ in slots}
    spans = sorted((t.data_ptr(), len(placeholders) + i) for i, t in enumerate(fixed))
    starts = [start for start, _ in spans]

    def view_of(tensor, buffer: int | None = None) -> ArgumentView:
        shape, dtype = tuple(int(d) for d in tensor.shape), str(tensor.dtype)
        if buffer is not None:
            return ArgumentView(buffer, 0, shape, dtype)
        # The buffer holding it: the last one starting at or before its address.
        address = tensor.data_ptr()
        start, index = spans[bisect.bisect_right(starts, address) - 1]
        itemsize = tvm.runtime.DataType(dtype).bits // 8
        return ArgumentView(index, (address - start) // itemsize, shape, dtype)

    described = [KernelCall("", tuple(view_of(arg, slot_buffer.get((number, position)))
                                      for position, arg in enumerate(args)))
                 for number, (_, args) in enumerate(calls)]
    placed = [ArgumentView(buffer_of[out[0]], 0, tuple(out[1]),
                           str(placeholder_tensors[out[0]].dtype))
              if isinstance(out, tuple) else view_of(out) for out in outputs]
    return LoweredRun(placeholders, [*placeholder_tensors.values(), *fixed], storage,
                      [func for func, _ in calls], described, first_per_run_call, placed)


def entry_function(buffers: Sequence[BufferParam], calls: Sequence[KernelCall],
                   symbol: str = ENTRY_SYMBOL, guard: ArgumentView | None = None,
                   id_checks: Sequence[IdCheck] = (), status: int | None = None
                   ) -> tirx.PrimFunc:
    """The host function ``symbol(first, *buffers)`` that makes ``calls`` in order, from
    call number ``first`` on (the calls before it compute constant values, made only when
    one of their inputs changed).

    With ``guard`` (one element of a buffer), the function is ``symbol(first, limit,
    *buffers)`` and its last call is made only where that element, once the other calls
    have run, is finite and at most ``limit`` (a float64; NaN: never): an optimiser's
    update after the check of the loss it follows (``Executor.attach_update``).

    With ``id_checks``, the function first checks those ids and, where one is out of its
    ranges, writes 1 into the int32 buffer number ``status`` (else 0) and makes no call at
    all: the caller then finds and names the id (a loop over a few ids here costs
    nanoseconds, Python's check of a batch of 16 labels 1.5 us).

    The buffers are taken as bare DLTensor handles, unchecked: the executor hands the
    shapes and dtypes its plan was made for (it checks the feeds itself), and TVM's checks
    of each buffer's shape, strides and type would make the function a hundred times
    larger, and LLVM's compile of it ten times slower. Each may carry a byte offset (a TVM
    view into another buffer) and need only its element's alignment (a caller's numpy
    array read where it lies); each kernel argument is a DLTensor built on the stack from
    its buffer's address, so the kernels see compact tensors without offset (and check
    their own arguments, as when the executor calls them from Python).
    """
    first = tirx.Var("first", "int32")
    limit = tirx.Var("limit", "float64")
    handles = [tirx.Var(f"buffer{index}", "handle") for index in range(len(buffers))]
    declarations, flat = _rows(handles, buffers)
    statements = []
    checks = [_id_check(flat[check.buffer], check, flat[status]) for check in id_checks]
    for number, call in enumerate(calls):
        for arg in call.args:
            if arg.dtype != flat[arg.buffer].dtype:
                raise ArgumentError(f"native run: call {number} ({call.symbol}) reads a "
                                    f"{arg.dtype} view of a {flat[arg.buffer].dtype} "
                                    f"buffer")
        arrays = [stack_tensor(flat[arg.buffer], arg) for arg in call.args]
        made = tirx.Evaluate(tirx.call_packed(call.symbol, *arrays))
        condition = first <= number
        if guard is not None and number == len(calls) - 1:
            value = tirx.BufferLoad(flat[guard.buffer], [tirx.IntImm("int64", guard.offset)])
            # NaN compares false: a NaN limit never updates, nor does a NaN value.
            condition = tirx.all(tirx.isfinite(value), tirx.Cast("float64", value) <= limit)
        statements.append(tirx.IfThenElse(condition, made, None))
    if checks:
        statements = _after_checks(checks, flat[status], statements)
    statements = declarations + statements
    body = tirx.SeqStmt([*statements, tirx.Evaluate(0)]) if statements else tirx.Evaluate(0)
    # The device the stack's DLTensors name, which TVM otherwise reads from the first
    # checked buffer argument: the CPU the executor runs on.
    body = tirx.AttrStmt(0, "device_id", tirx.IntImm("int32", 0), body)
    body = tirx.AttrStmt(0, "device_type", tirx.IntImm("int32", DLPACK_CPU), body)
    lead = [first] if guard is None else [first, limit]
    func = tirx.PrimFunc([*lead, *handles], body)
    return func.with_attr("global_symbol", symbol)


def _rows(handles: Sequence[tirx.Var], buffers: Sequence[BufferParam]) -> tuple[list, list]:
    """The statements declaring each buffer handle's elements as one row, from its data
    pointer moved by its byte offset, and those rows."""
    declarations, flat = [], []
    for handle, param in zip(handles, buffers):
        start = tirx.Var(f"{handle.name}_start", "handle")
        moved = tirx.handle_add_byte_offset(
            tirx.tvm_struct_get(handle, 0, DLTENSOR_DATA, "handle"),
            tirx.Cast("int64", tirx.tvm_struct_get(handle, 0, DLTENSOR_BYTE_OFFSET, "uint64")))
        row = tirx.decl_buffer((math.prod(param.shape),), param.dtype, f"{handle.name}_row",
                               data=start)
        declarations += [tirx.LetStmt(start, moved), tirx.DeclBuffer(row, data=start)]
        flat.append(row)
    return declarations, flat


def _after_checks(checks: list, status: tirx.Buffer, statements: list) -> list:
    """``statements`` made only where the id ``checks`` left ``status[0]`` at 0."""
    zero = tirx.IntImm("int64", 0)
    ok = tirx.BufferLoad(status, [zero]) == 0
    # (A sequence of one statement is not allowed: the closing no-op makes it two.)
    made = tirx.SeqStmt([*statements, tirx.Evaluate(0)])
    return [tirx.BufferStore(status, tirx.IntImm("int32", 0), [zero]), *checks,
            tirx.IfThenElse(ok, made, None)]


def _id_check(ids: tirx.Buffer, check: IdCheck, status: tirx.Buffer) -> tirx.Stmt:
    """A loop setting ``status[0]`` to 1 where one of the ``check.count`` ids of ``ids`` lies
    outside ``check.ranges``."""
    index = tirx.Var("id_index", "int64")
    value = tirx.BufferLoad(ids, [index])

    def const(number: int) -> tirx.PrimExpr:
        return tirx.const(number, ids.dtype)

    inside = [tirx.any(tirx.all(value >= const(start), value < const(stop)),
                       *[value == const(extra) for extra in also])
              for start, stop, also in check.ranges]
    mark = tirx.BufferStore(status, tirx.IntImm("int32", 1), [tirx.IntImm("int64", 0)])
    return tirx.For(index, tirx.IntImm("int64", 0), tirx.IntImm("int64", check.count),
                    tirx.ForKind.SERIAL,
                    tirx.IfThenElse(tirx.Not(tirx.all(*inside)), mark, None))


def element_address(buffer: tirx.Buffer, offset: int) -> tirx.PrimExpr:
    """The address of element ``offset`` of ``buffer`` read as one row."""
    index = np.unravel_index(offset, [int(d) for d in buffer.shape])
    return tirx.address_of(tirx.BufferLoad(buffer, [tirx.IntImm("int64", int(i))
                                                    for i in index]))


def stack_tensor(buffer: tirx.Buffer, view: ArgumentView) -> tirx.PrimExpr:
    """A compact DLTensor, built on the host function's stack, for ``view`` of ``buffer``:
    its data pointer at the view's first element, so the kernel sees no byte offset."""
    shape = tirx.call_intrin("handle", "tirx.tvm_stack_make_shape",
                             *[tirx.IntImm("int64", d) for d in view.shape])
    return tirx.call_intrin("handle", "tirx.tvm_stack_make_array",
                            element_address(buffer, view.offset), shape,
                            tirx.IntImm("int32", 0), tirx.IntImm("int32", len(view.shape)),
                            tirx.const(0, view.dtype), tirx.IntImm("int32", 0))


def host_target(target: tvm.target.Target) -> tvm.target.Target:
    """The target an entry is compiled for: the kernels' CPU, without LLVM's optimisations.
    The entry only fills DLTensors and calls kernels, which optimising does not speed up
    measurably, while it makes LLVM's compile of a long entry several times slower (0.5 s
    against 4 s for the GPT's 277 calls, znver4)."""
    host = target.host or target
    return tvm.target.Target({**host.export(), "opt-level": 0})


# How many live plans use each kernel name (``_register``): a name leaves TVM's table when
# the last plan using it is dropped.
_name_users: dict[str, int] = {}
_names_lock = threading.Lock()


class NativeRun:
    """A program's kernel calls compiled into one host function, with its arguments.

    ``kernels``: the packed function of each call, and ``identities`` what each computes
    (its ``Kernel.key``: equal keys, equal code); ``calls``: what each call reads and writes
    (their ``symbol`` is ignored); ``buffers``: the tensors the entry starts with, one per
    buffer the calls view (``rebind`` replaces one, as a feed changes). ``run(first)`` makes
    the calls from number ``first`` on. With ``guard``, the last call is made only where
    that element is then finite and at most ``run``'s ``limit``; with ``id_checks``, no
    call is made where an id is out of range, and buffer ``status`` says so
    (``entry_function``).

    The entry finds its kernels in TVM's global table under names made from a digest of the
    whole run (kernels, views, buffer shapes), so that the compiled entry is the same from
    process to process and goes into dlsys's disk cache beside the kernels: LLVM takes
    about 40 ms per ten calls to compile it, a cached one loads in a millisecond.
    """

    def __init__(self, kernels: Sequence, identities: Sequence[str],
                 calls: Sequence[KernelCall], buffers: Sequence, target: tvm.target.Target,
                 guard: ArgumentView | None = None, id_checks: Sequence[IdCheck] = (),
                 status: int | None = None):
        host = host_target(target)
        params = [BufferParam(tuple(int(d) for d in b.shape), str(b.dtype)) for b in buffers]
        digest = hashlib.sha256(repr((
            list(identities), [call.args for call in calls], params, guard, list(id_checks),
            status, str(host), tvm.__version__, _code_fingerprint())).encode()).hexdigest()[:32]
        names: dict[str, str] = {}
        for identity in identities:
            names.setdefault(identity, f"dlsys.native.{digest}.kernel{len(names)}")
        self._names = sorted(set(names.values()))
        _register({names[i]: func for i, func in zip(identities, kernels)})
        weakref.finalize(self, _unregister, self._names)
        named = [KernelCall(names[i], call.args) for i, call in zip(identities, calls)]
        self.entry = _cached_entry(digest, lambda: tvm.IRModule(
            {ENTRY_SYMBOL: entry_function(params, named, guard=guard, id_checks=id_checks,
                                          status=status)}), host)
        # The entry's leading scalars: ``first``, and the guard's ``limit``.
        self._lead = 1 if guard is None else 2
        self.args: list = [0, *buffers] if guard is None else [0, math.nan, *buffers]

    def rebind(self, buffer: int, tensor) -> None:
        """Hand ``tensor`` to the entry as buffer number ``buffer`` from the next run on."""
        self.args[buffer + self._lead] = tensor

    def run(self, first: int = 0, limit: float = math.nan) -> None:
        args = self.args
        args[0] = first
        if self._lead == 2:
            args[1] = limit
        self.entry(*args)


def _cached_entry(digest: str, module, target: tvm.target.Target):
    """The entry compiled from ``module()``, through dlsys's disk cache of kernels when it
    is enabled (the entry's code depends on nothing but ``digest``)."""
    from dlsys.kernels import build, disk_cache

    directory = disk_cache.private_dir() if build.disk_cache_enabled() else None
    key = f"native{digest}"
    if directory is not None:
        entry = disk_cache.load(directory, key, ENTRY_SYMBOL)
        if entry is not None:
            return entry
    lib = tvm.tirx.build(module(), target=target)
    if directory is not None and not disk_cache.opened_before(directory, key):
        disk_cache.save(lib, directory, key)
        entry = disk_cache.load(directory, key, ENTRY_SYMBOL)
        if entry is not None:
            return entry
    return lib[ENTRY_SYMBOL]


def _code_fingerprint() -> str:
    """The source of this module, which decides the entry's code."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _register(functions: dict) -> None:
    with _names_lock:
        for name, func in functions.items():
            if _name_users.get(name, 0) == 0:
                tvm_ffi.register_global_func(name, func, override=True)
            _name_users[name] = _name_users.get(name, 0) + 1


def _unregister(names: list[str]) -> None:
    with _names_lock:
        for name in names:
            _name_users[name] -= 1
            if _name_users[name] == 0:
                del _name_users[name]
                try:
                    tvm_ffi.remove_global_func(name)
                except Exception:  # noqa: BLE001 -- at interpreter exit the table may be gone
                    pass
