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
import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx

from dlsys.errors import ArgumentError

ENTRY_SYMBOL = "dlsys_run"


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
                   symbol: str = ENTRY_SYMBOL) -> tirx.PrimFunc:
    """The host function ``symbol(first, *buffers)`` that makes ``calls`` in order, from
    call number ``first`` on (the calls before it compute constant values, made only when
    one of their inputs changed).

    Buffers may carry a byte offset (a TVM view into another buffer) and need only their
    element's alignment (a caller's numpy array read where it lies); each kernel argument is
    a DLTensor built on the stack from its buffer's address, so the kernels see compact
    tensors without offset, as the executor's Python loop hands them.
    """
    first = tirx.Var("first", "int32")
    declared = [tirx.decl_buffer(param.shape, param.dtype, f"buffer{index}",
                                 data_alignment=tvm.runtime.DataType(param.dtype).bits // 8,
                                 offset_factor=1)
                for index, param in enumerate(buffers)]
    statements = []
    for number, call in enumerate(calls):
        for arg in call.args:
            if arg.dtype != declared[arg.buffer].dtype:
                raise ArgumentError(f"native run: call {number} ({call.symbol}) reads a "
                                    f"{arg.dtype} view of a {declared[arg.buffer].dtype} "
                                    f"buffer")
        arrays = [stack_tensor(declared[arg.buffer], arg) for arg in call.args]
        made = tirx.Evaluate(tirx.call_packed(call.symbol, *arrays))
        statements.append(tirx.IfThenElse(first <= number, made, None))
    # (A sequence of one statement is not allowed: the closing no-op makes it two.)
    body = tirx.SeqStmt([*statements, tirx.Evaluate(0)]) if statements else tirx.Evaluate(0)
    params = [first, *declared]
    func = tirx.PrimFunc(params, body)
    return func.with_attr("global_symbol", symbol)


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


_plans = itertools.count()


class NativeRun:
    """A program's kernel calls compiled into one host function, with its arguments.

    ``kernels``: the packed function of each call; ``calls``: what each call reads and
    writes (its ``symbol`` is ignored: this plan names its kernels itself); ``buffers``: the
    tensors the entry starts with, one per ``BufferParam`` (``rebind`` replaces one, as a
    feed changes). ``run(first)`` makes the calls from number ``first`` on.
    """

    def __init__(self, kernels: Sequence, calls: Sequence[KernelCall],
                 buffers: Sequence, target: tvm.target.Target):
        plan = next(_plans)
        names: dict[int, str] = {}
        self._registered: list[str] = []
        for func in kernels:
            if id(func) not in names:
                names[id(func)] = f"dlsys.native.plan{plan}.kernel{len(names)}"
                tvm_ffi.register_global_func(names[id(func)], func, override=True)
                self._registered.append(names[id(func)])
        # The table holds the functions until the plan goes; the plan holds them too (the
        # executor's call list), so a kernel never goes while an entry may call it.
        weakref.finalize(self, _unregister, list(self._registered))
        named = [KernelCall(names[id(func)], call.args) for func, call in zip(kernels, calls)]
        params = [BufferParam(tuple(int(d) for d in b.shape), str(b.dtype)) for b in buffers]
        module = tvm.IRModule({ENTRY_SYMBOL: entry_function(params, named)})
        self.entry = tvm.tirx.build(module, target=target.host or target)[ENTRY_SYMBOL]
        self.args: list = [0, *buffers]

    def rebind(self, buffer: int, tensor) -> None:
        """Hand ``tensor`` to the entry as buffer number ``buffer`` from the next run on."""
        self.args[buffer + 1] = tensor

    def run(self, first: int = 0) -> None:
        args = self.args
        args[0] = first
        self.entry(*args)


def _unregister(names: list[str]) -> None:
    for name in names:
        try:
            tvm_ffi.remove_global_func(name)
        except Exception:  # noqa: BLE001 -- at interpreter exit the table may be gone already
            pass
