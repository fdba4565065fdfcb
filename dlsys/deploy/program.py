"""One compiled program of ``dlsys.compile``: the graph compiled by an executor for one set
of shapes and run once, described as the calls a run makes after the constant values are
computed, with every argument a view of an input, an output, a weight or working memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm

from dlsys.deploy.graph import Graph
from dlsys.errors import ArgumentError, DlsysError
from dlsys.graph import IndexBounds, Node, find_topo_sort
from dlsys.runtime.executor import Executor, native_run_enabled
from dlsys.runtime.native import ArgumentView, KernelCall


@dataclass
class Tensor:
    """A buffer of the library that is not an entry's argument: weights and constant values
    (``data``, in .rodata) or working memory (``data`` None, in the static array)."""

    elements: int
    dtype: str
    data: bytes | None
    offset: int = 0  # bytes from the start of its region, set when placed


@dataclass
class Entry:
    """One batch size's program: the kernels its calls make, with arguments as views of
    buffers numbered inputs first, then outputs, then ``tensors``."""

    inputs: list[tuple[str, tuple[int, ...], str]]   # (name, shape, dtype)
    outputs: list[tuple[str, tuple[int, ...], str]]
    tensors: list[Tensor] = field(default_factory=list)
    calls: list[tuple[object, KernelCall]] = field(default_factory=list)  # (Kernel, call)
    copies: list[tuple[int, ArgumentView]] = field(default_factory=list)  # output <- view
    # Inputs read as integer ids: (input number, bounds, what the error says), checked by
    # the entry before any kernel runs, as the executor checks them (an id out of range
    # would have a kernel read another row's memory).
    id_checks: list[tuple[int, IndexBounds, str]] = field(default_factory=list)


def compile_entry(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> Entry:
    """Compile the graph for ``shapes`` with an executor, run it once on zeros (computing
    the constant values), and describe the calls a run makes after that."""
    inputs, outputs, dtype, input_dtypes = graph.build(shapes)
    if not graph.output_names:
        graph.output_names = [f"output{i}" for i in range(len(outputs))]
    weights = sorted({n for n in _placeholders(outputs) if n.op.holds_value}, key=id)
    executor = Executor(outputs, dtype=dtype, constants=weights)
    if not native_run_enabled():
        raise ArgumentError("dlsys.compile needs the native run loop: unset DLSYS_NATIVE_RUN=0")
    feeds = {p: np.zeros(shapes[name], input_dtypes[name])
             for name, p in zip(graph.input_names, inputs) if p in executor.placeholders}
    results = executor.run(feeds)
    # The executor's plan as it stands after the run (private: the runtime offers no
    # public view of its buffers and calls yet).
    prepared = executor._prepared
    program = prepared.program
    if program.state_targets:
        # The weights live in read-only memory; a model updating one in place (batch norm's
        # running statistics in training mode) is a training graph, not one to deploy.
        names = sorted(p.name for p in program.state_targets)
        raise ArgumentError(f"dlsys.compile: the model updates {names} in place at every run; "
                            f"compile it in eval mode")
    kernels = [k for k in program.kernels if k is not None]
    fed = list(prepared.feed_buffers)                  # the placeholders, in buffer order
    buffers = prepared.native.args[1:]                 # feeds, storage, constants
    storage_count = len(program.plan.storage_elements)
    input_of = {p: i for i, p in enumerate(inputs)}
    entry = Entry([(n, shapes[n], input_dtypes[n]) for n in graph.input_names],
                   [(n, tuple(int(d) for d in r.shape), str(r.dtype))
                    for n, r in zip(graph.output_names, results)])
    for node, checks in program.index_checks.items():
        for bounds, reader in checks:
            entry.id_checks.append((input_of[node], bounds, f"input {node.name}: id out of "
                                    f"range for {reader.name}, which takes ids "
                                    f"{bounds.describe()}"))
    first_tensor = len(inputs) + len(outputs)
    numbered: dict[int, int] = {}  # buffer number in the executor -> number in the library

    def number_of(buffer: int) -> int:
        if buffer < len(fed) and fed[buffer] in input_of:
            return input_of[fed[buffer]]
        if buffer not in numbered:
            tensor = (executor._bound[fed[buffer]] if buffer < len(fed) else buffers[buffer])
            elements = int(np.prod(tensor.shape))
            working = len(fed) <= buffer < len(fed) + storage_count
            data = None if working else np.from_dlpack(tensor).tobytes()
            numbered[buffer] = first_tensor + len(entry.tensors)
            entry.tensors.append(Tensor(elements, str(tensor.dtype), data))
        return numbered[buffer]

    locate = _locator(prepared, buffers, fed)
    for number in range(prepared.first_per_run_call, len(prepared.calls)):
        _, args = prepared.calls[number]
        views = []
        for position, arg in enumerate(args):
            buffer, offset = locate(number, position, arg)
            views.append(ArgumentView(number_of(buffer), offset,
                                      tuple(int(d) for d in arg.shape), str(arg.dtype)))
        entry.calls.append((kernels[number], KernelCall("", tuple(views))))
    for index, (out, result) in enumerate(zip(prepared.outputs, results)):
        if isinstance(out, tuple):  # an output that is a placeholder's value
            buffer, offset = fed.index(out[0]), 0
        else:
            buffer, offset = locate(None, None, result)
        entry.copies.append((len(inputs) + index, ArgumentView(
            number_of(buffer), offset, tuple(int(d) for d in result.shape), str(result.dtype))))
    return entry


def _placeholders(outputs: list) -> list[Node]:
    return [n for n in find_topo_sort(outputs) if n.op.is_placeholder]


def _locator(prepared, buffers: list, fed: list):
    """``locate(call, position, tensor)``: the executor's buffer number a call's argument
    (or an output's tensor) lies in, and its element offset there, found as the executor
    finds them (a placeholder's slot, else by address)."""
    slot = {(call, position): fed.index(p) for p, slots in prepared.feed_slots.items()
            for call, position, _ in slots}
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * itemsize(str(t.dtype)), i)
                   for i, t in enumerate(buffers) if i >= len(fed))

    def locate(call, position, tensor) -> tuple[int, int]:
        if (call, position) in slot:
            return slot[call, position], 0
        address = tensor.data_ptr()
        for start, end, index in spans:
            if start <= address < end:
                return index, (address - start) // itemsize(str(tensor.dtype))
        raise DlsysError(f"dlsys.compile: a kernel argument at {address:#x} lies in no buffer "
                         f"of the plan")

    return locate


def itemsize(dtype: str) -> int:
    return tvm.runtime.DataType(dtype).bits // 8

