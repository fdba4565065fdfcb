"""``dlsys.compile``: a model as one shared library that runs without dlsys and without
TVM's compiler.

``compile(model, input_shapes, path)`` compiles an ONNX file (or ``ModelProto``) or a
``dlsys.nn.Module`` for fixed input shapes, or for a listed set of batch sizes, and writes
``path`` (``model.so``) with ``libtvm_runtime.so`` beside it. The library exports one
function per batch size, ``run_b<N>(inputs..., outputs...)`` (``run`` is the first one),
taking and filling DLTensors (numpy arrays through ``tvm_ffi``); ``tvm_ffi.load_module``
loads it, so a deployment needs ``apache-tvm-ffi`` and numpy alone (docs/deployment.md).

How the library is made, and why:

- The program is compiled by dlsys's passes as the executor compiles it, the weights taken
  as constants, and run once here on zeros: the values computed ahead of the runs from the
  weights alone (prepacked matmul operands, folded constants) are read from that run, so
  the library holds their final values and makes only the per-run kernel calls.
- Every kernel's scheduled IR (``Kernel.source``) is renamed ``k<i>`` and all are built as
  one LLVM module; each entry is a host function, in a module of its own, that calls them
  by symbol (``T.call_cpacked``: ``export_library`` links every module built to machine
  code into the one ``.so``, so there are no imported modules for ``T.call_packed`` to
  search, and a direct call costs no lookup). A second declaration of a kernel in one host
  module would be renamed by LLVM and fail to link, hence one module per entry.
- Weights are in the library itself, in ``.rodata``, through the assembler's ``.incbin`` of
  a file written here (64-byte aligned; 80 MB cost about 2 s to assemble and link, mostly
  disk writes); working memory is one static, 64-byte aligned array (``.bss``: it costs no
  file size). A small C file (``library._support_source``) holds both and hands their
  addresses to the entries through ``T.call_extern``. One file to ship, not a library and
  a weights file that could part. The static working memory makes a loaded library run
  one call at a time, as an executor does: threads share a library behind a lock.
- Inputs read as integer ids are range-checked by the entry before any kernel runs, as
  the executor checks them.
- The kernels are built for ``target`` (default: this CPU, ``native``; ``x86-64-v3`` for
  a portable AVX2 baseline). The entries are built for the plain x86-64 baseline, and
  each first calls the C check of the CPU features the kernels were built with
  (``__builtin_cpu_supports``): on a CPU without them the call fails with an error naming
  the missing features, rather than dying of an illegal instruction.
- Parallel kernels call ``TVMBackendParallelLaunch``, and large scratch buffers
  ``TVMBackendAllocWorkspace``, which ``libtvm_runtime.so`` provides (3.3 MB; it needs
  only ``libtvm_ffi.so``, loaded by ``import tvm_ffi``): it is copied beside the library,
  which names it as a dependency found through ``$ORIGIN``. Without it the kernels would
  have to be built single-threaded, using one core of the machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import tvm
from tvm.target import codegen

from dlsys.deploy.graph import graph_of
from dlsys.deploy.library import GUARDED_FEATURES, link
from dlsys.deploy.program import Entry, compile_entry
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.kernels import build

__all__ = ["GUARDED_FEATURES", "compile", "resolve_target", "target_features"]


def resolve_target(target: str | tvm.target.Target | None) -> tvm.target.Target:
    """The LLVM target the kernels are built for: ``None``/``"native"`` is this CPU, an
    ``-march`` level (``"x86-64-v3"``) or an LLVM CPU name (``"skylake-avx512"``) another."""
    if isinstance(target, tvm.target.Target):
        if target.kind.name != "llvm":
            raise ArgumentError(f"dlsys.compile: target must be a CPU (llvm) target, got {target}")
        return target
    if target is None or target == "native":
        return build.make_target("llvm")
    if not isinstance(target, str):
        raise ArgumentTypeError(f"dlsys.compile: target must be a string, got {target!r}")
    host = build.make_target("llvm")
    if target not in codegen.llvm_get_cpu_archlist(host):
        raise ArgumentError(f"dlsys.compile: unknown target {target!r}; give 'native', an "
                            f"x86-64 level (x86-64-v2, x86-64-v3, x86-64-v4) or an LLVM CPU "
                            f"name (znver3, skylake-avx512...)")
    return tvm.target.Target({"kind": "llvm", "mcpu": target})


def target_features(target: tvm.target.Target) -> list[str]:
    """The guarded CPU features the kernels built for ``target`` may use."""
    return [f for f in GUARDED_FEATURES if codegen.llvm_cpu_has_features([f], target)]


def compile(model, input_shapes=None, path: str | os.PathLike = "model.so",
            target: str | tvm.target.Target | None = None,
            batch_sizes: Sequence[int] | None = None,
            require_cpu_features: Sequence[str] = ()) -> Path:
    """Compile ``model`` (an ONNX path, bytes or ModelProto, or a ``dlsys.nn.Module``) for
    ``input_shapes`` into the shared library ``path``, with ``libtvm_runtime.so`` beside
    it; returns the library's path.

    ``input_shapes``: input name -> shape, or shapes in input order (None: the shapes an
    ONNX file fixes). ``batch_sizes``: compile one entry ``run_b<N>`` per size, the first
    axis of every input set to it (``run`` is the first listed); without it, one entry
    ``run`` at ``input_shapes``. ``target``: the CPU the kernels are built
    for ("native", an x86-64 level such as "x86-64-v3", or an LLVM CPU name).
    ``require_cpu_features``: features the library's check requires besides the target's
    (a test names one this CPU lacks, to see the check refuse).
    """
    graph, shapes = graph_of(model, input_shapes)
    kernel_target = resolve_target(target)
    path = Path(path)
    entries: list[tuple[str, Entry]] = []
    with build.llvm_target(kernel_target):
        if batch_sizes is None:
            entries.append(("run", compile_entry(graph, shapes)))
        for batch in _batch_sizes(batch_sizes):
            batched = {n: (batch, *s[1:]) for n, s in shapes.items()}
            entries.append((f"run_b{batch}", compile_entry(graph, batched)))
        if batch_sizes is not None:
            entries.insert(0, ("run", entries[0][1]))
    return link(entries, path, kernel_target,
                 [*target_features(kernel_target), *require_cpu_features])


def _batch_sizes(batch_sizes) -> list[int]:
    """The listed batch sizes, checked (none without a list)."""
    if batch_sizes is None:
        return []
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or \
            not batch_sizes or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
        raise ArgumentError(f"dlsys.compile: batch_sizes must be a list of positive ints, got "
                            f"{batch_sizes!r}")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise ArgumentError(f"dlsys.compile: batch_sizes lists a size twice: {batch_sizes}")
    return list(batch_sizes)

