"""One compiled program of ``dlsys.compile``: the graph compiled by an executor for one set
of shapes and run once, described as the calls a run makes after the constant values are
computed, with every argument a view of an input, an output, a weight or working memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm

from dlsys.deploy.graph import Graph
from dlsys.errors import ArgumentError
from dlsys.graph import IndexBounds, Node, find_topo_sort
from dlsys.runtime.executor import Executor
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
    feeds = {p: np.zeros(shapes[name], input_dtypes[name])
             for name, p in zip(graph.input_names, inputs) if p in executor.placeholders}
    results = executor.run(feeds)
    program = executor.program()
    if program.state_targets:
        # The weights live in read-only memory; a model updating one in place (batch norm's
        # running statistics in training mode) is a training graph, not one to deploy.
        names = sorted(p.name for p in program.state_targets)
        raise ArgumentError(f"dlsys.compile: the model updates {names} in place at every run; "
                            f"compile it in eval mode")
    lowered = executor.lowered_run()
    kernels = [k for k in program.kernels if k is not None]
    fed = lowered.placeholders
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
            tensor = lowered.buffers[buffer]
            elements = int(np.prod(tensor.shape))
            working = len(fed) <= buffer < len(fed) + lowered.storage
            data = None if working else np.from_dlpack(tensor).tobytes()
            numbered[buffer] = first_tensor + len(entry.tensors)
            entry.tensors.append(Tensor(elements, str(tensor.dtype), data))
        return numbered[buffer]

    def renumbered(view: ArgumentView) -> ArgumentView:
        return ArgumentView(number_of(view.buffer), view.offset, view.shape, view.dtype)

    for number in range(lowered.first_per_run_call, len(lowered.calls)):
        views = tuple(renumbered(view) for view in lowered.calls[number].args)
        entry.calls.append((kernels[number], KernelCall("", views)))
    for index, view in enumerate(lowered.outputs):
        entry.copies.append((len(inputs) + index, renumbered(view)))
    return entry


def _placeholders(outputs: list) -> list[Node]:
    return [n for n in find_topo_sort(outputs) if n.op.is_placeholder]


def itemsize(dtype: str) -> int:
    return tvm.runtime.DataType(dtype).bits // 8

