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
  one LLVM module, imported by a host module whose entries call them
  (``T.call_packed`` finds a function in the imported modules). ``export_library`` links
  both into one ``.so``.
- Weights are in the library itself, in ``.rodata``, through the assembler's ``.incbin`` of
  a file written here (64-byte aligned; linking 50 MB so takes a fraction of a second,
  where a C array initializer would take the compiler minutes); working memory is one
  static, 64-byte aligned array (``.bss``: it costs no file size). A small C file
  (``_support_source``) holds both and hands their addresses to the entries through
  ``T.call_extern``. One file to ship, not a library and a weights file that could part.
  The static working memory makes a loaded library run one call at a time, as an
  executor does: threads share a library behind a lock, or load it once each per copy.
- The kernels are built for ``target`` (default: this CPU, ``native``; ``x86-64-v3`` for
  a portable AVX2 baseline). The entries are built for the plain x86-64 baseline, and
  each first calls the C check of the CPU features the kernels were built with
  (``__builtin_cpu_supports``): on a CPU without them the call fails with an error naming
  the missing features, rather than dying of an illegal instruction.
- Parallel kernels call ``TVMBackendParallelLaunch``, and large scratch buffers
  ``TVMBackendAllocWorkspace``, which ``libtvm_runtime.so`` provides (3.3 MB; it needs
  only ``libtvm_ffi.so``, loaded by ``import tvm_ffi``): it is copied beside the library,
  which names it as a dependency found through ``$ORIGIN``. Single-threaded kernels
  without it would run several times slower on a multi-core machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import tirx
from tvm.target import codegen

from dlsys.errors import ArgumentError, ArgumentTypeError, DlsysError, ShapeError
from dlsys.graph import Node
from dlsys.kernels import build
from dlsys.runtime.executor import Executor, native_run_enabled
from dlsys.runtime.native import ArgumentView, KernelCall

ALIGNMENT = 64
# CPU features the C check can test (names both LLVM and GCC's __builtin_cpu_supports
# know); the check tests those of them the kernels' target has.
GUARDED_FEATURES = ("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma",
                    "f16c", "bmi", "bmi2", "avx512f", "avx512vl", "avx512bw", "avx512dq",
                    "avx512cd", "avx512vnni", "avx512bf16", "avx512ifma", "avx512vbmi",
                    "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq", "avx512fp16", "gfni",
                    "vpclmulqdq", "vaes", "amx-tile", "amx-int8", "amx-bf16")


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


# ------------------------------------------------------------------ the model's graph
@dataclass
class _Graph:
    """A model as dlsys nodes: its inputs (placeholders, named), outputs and weights."""

    input_names: list[str]
    output_names: list[str]
    # shapes -> (input placeholders, output nodes, dtype computed in, each input's dtype)
    build: Callable
    declared: dict = field(default_factory=dict)  # an ONNX input's shape as the file says


def _onnx_graph(source) -> _Graph:
    from dlsys.onnx.importer import OnnxModule
    from dlsys.onnx.reader import OnnxError, load_model
    from dlsys.ops.placeholder import Variable

    model, where = load_model(source)
    module = OnnxModule(model, where)
    module.eval()
    folded = module.constant_read_inputs()
    if folded:
        raise OnnxError(f"{where}: input(s) {folded} are read as numbers fixed when the graph "
                        f"is built (a reshape's target shape); a compiled library takes only "
                        f"inputs its kernels read")

    def make(shapes: dict[str, tuple[int, ...]]):
        inputs = {name: Variable(name) for name in module.input_names}
        outputs = module.build_for_feeds(inputs, shapes)
        module.check_integer_inputs(inputs, outputs)
        for name, value in zip(module.output_names, outputs):
            if not isinstance(value, Node):
                raise OnnxError(f"{where}: output {name!r} is a constant of the file; a "
                                f"compiled library computes every output")
        for name, dtype in zip(module.output_names, module.output_dtypes):
            if dtype is not None and dtype.name != module.dtype:
                raise OnnxError(f"{where}: output {name!r} has type {dtype.name}, but the "
                                f"library returns what dlsys computes in ({module.dtype})")
        input_dtypes = {name: (np.dtype(dtype).name if dtype is not None and dtype.kind in "iu"
                               else module.dtype)
                        for name, dtype in zip(module.input_names, module.input_dtypes)}
        return ([inputs[n] for n in module.input_names], list(outputs), module.dtype,
                input_dtypes)

    return _Graph(list(module.input_names), list(module.output_names), make,
                  {name: module.declared[name][0] for name in module.input_names})


def _module_graph(module, input_names: list[str]) -> _Graph:
    from dlsys.ops.placeholder import Variable

    def make(shapes: dict[str, tuple[int, ...]]):
        inputs = [Variable(name) for name in input_names]
        was_training = module.training
        module.eval()
        try:
            out = module(*inputs)
        finally:
            module.train(was_training)
        outputs = list(out) if isinstance(out, (list, tuple)) else [out]
        return inputs, outputs, "float32", {name: "float32" for name in input_names}

    return _Graph(list(input_names), [], make)


def _graph_of(model, input_shapes) -> tuple[_Graph, dict[str, tuple[int, ...]]]:
    """The model's graph and each input's shape (``input_shapes``: a dict by input name, a
    list in input order, or None for the shapes an ONNX file fixes)."""
    from dlsys.nn.module import Module

    if isinstance(model, Module):
        if input_shapes is None:
            raise ArgumentError("dlsys.compile: a dlsys.nn.Module needs input_shapes")
        names = (list(input_shapes) if isinstance(input_shapes, Mapping)
                 else [f"input{i}" for i in range(len(_shape_list(input_shapes)))])
        graph = _module_graph(model, names)
    elif isinstance(model, (str, os.PathLike, bytes)) or type(model).__name__ == "ModelProto":
        graph = _onnx_graph(model)
    else:
        raise ArgumentTypeError(f"dlsys.compile: expected an ONNX file, a ModelProto or a "
                                f"dlsys.nn.Module, got {type(model).__name__}")
    if input_shapes is None:
        shapes = {}
        for name, dims in graph.declared.items():
            if dims is None or not all(isinstance(d, int) for d in dims):
                raise ShapeError(f"dlsys.compile: input {name!r} has shape {dims} in the file; "
                                 f"give its shape in input_shapes (--input-shape)")
            shapes[name] = tuple(dims)
    elif isinstance(input_shapes, Mapping):
        unknown = [n for n in input_shapes if n not in graph.input_names]
        missing = [n for n in graph.input_names if n not in input_shapes]
        if unknown or missing:
            raise ArgumentError(f"dlsys.compile: the model's inputs are {graph.input_names}; "
                                f"input_shapes names {list(input_shapes)}")
        shapes = {n: build.check_shape(f"input_shapes[{n!r}]", input_shapes[n])
                  for n in graph.input_names}
    else:
        listed = _shape_list(input_shapes)
        if len(listed) != len(graph.input_names):
            raise ArgumentError(f"dlsys.compile: the model takes {len(graph.input_names)} "
                                f"input(s) {graph.input_names}, input_shapes lists "
                                f"{len(listed)}")
        shapes = {n: build.check_shape(f"input_shapes[{i}]", s)
                  for i, (n, s) in enumerate(zip(graph.input_names, listed))}
    return graph, shapes


def _shape_list(input_shapes) -> list:
    if isinstance(input_shapes, (str, bytes)) or not isinstance(input_shapes, Sequence):
        raise ArgumentTypeError(f"dlsys.compile: input_shapes must be a dict of input name -> "
                                f"shape or a list of shapes, got {input_shapes!r}")
    # One shape given bare, (1, 784), for a one-input model.
    if input_shapes and all(isinstance(d, int) for d in input_shapes):
        return [tuple(input_shapes)]
    return list(input_shapes)


# ------------------------------------------------------------- one compiled program
@dataclass
class _Tensor:
    """A buffer of the library that is not an entry's argument: weights and constant values
    (``data``, in .rodata) or working memory (``data`` None, in the static array)."""

    elements: int
    dtype: str
    data: bytes | None
    offset: int = 0  # bytes from the start of its region, set when placed


@dataclass
class _Entry:
    """One batch size's program: the kernels its calls make, with arguments as views of
    buffers numbered inputs first, then outputs, then ``tensors``."""

    inputs: list[tuple[str, tuple[int, ...], str]]   # (name, shape, dtype)
    outputs: list[tuple[str, tuple[int, ...], str]]
    tensors: list[_Tensor] = field(default_factory=list)
    calls: list[tuple[object, KernelCall]] = field(default_factory=list)  # (Kernel, call)
    copies: list[tuple[int, ArgumentView]] = field(default_factory=list)  # output <- view


def _compile_entry(graph: _Graph, shapes: dict[str, tuple[int, ...]]) -> _Entry:
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
             for name, p in zip(graph.input_names, inputs)}
    results = executor.run(feeds)
    # The executor's plan, read as it stands after the run (see the lead's runtime).
    prepared = executor._prepared
    program = prepared.program
    kernels = [k for k in program.kernels if k is not None]
    fed = list(prepared.feed_buffers)                  # the placeholders, in buffer order
    buffers = prepared.native.args[1:]                 # feeds, storage, constants
    storage_count = len(program.plan.storage_elements)
    input_of = {p: i for i, p in enumerate(inputs)}
    entry = _Entry([(n, shapes[n], input_dtypes[n]) for n in graph.input_names],
                   [(n, tuple(int(d) for d in r.shape), str(r.dtype))
                    for n, r in zip(graph.output_names, results)])
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
            entry.tensors.append(_Tensor(elements, str(tensor.dtype), data))
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
    from dlsys.graph import find_topo_sort

    return [n for n in find_topo_sort(outputs) if n.op.is_placeholder]


def _locator(prepared, buffers: list, fed: list):
    """``locate(call, position, tensor)``: the executor's buffer number a call's argument
    (or an output's tensor) lies in, and its element offset there, found as the executor
    finds them (a placeholder's slot, else by address)."""
    slot = {(call, position): fed.index(p) for p, slots in prepared.feed_slots.items()
            for call, position, _ in slots}
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * _itemsize(str(t.dtype)), i)
                   for i, t in enumerate(buffers) if i >= len(fed))

    def locate(call, position, tensor) -> tuple[int, int]:
        if (call, position) in slot:
            return slot[call, position], 0
        address = tensor.data_ptr()
        for start, end, index in spans:
            if start <= address < end:
                return index, (address - start) // _itemsize(str(tensor.dtype))
        raise DlsysError(f"dlsys.compile: a kernel argument at {address:#x} lies in no buffer "
                         f"of the plan")

    return locate


def _itemsize(dtype: str) -> int:
    return tvm.runtime.DataType(dtype).bits // 8


# --------------------------------------------------------------------- the library
def _entry_function(entry: _Entry, symbols: dict[int, str], weights_offset: dict[int, int],
                    name: str) -> tirx.PrimFunc:
    """The host function ``name(inputs..., outputs...)``: checks the CPU, then makes the
    entry's calls (kernels by their library names ``symbols[id(kernel)]``), then copies each
    output into the caller's tensor. Weights and working memory are found through the C
    support functions."""
    # Named as the model names them, so that TVM's argument checks name the tensor.
    names = [re.sub(r"\W", "_", name) for name, _, _ in (*entry.inputs, *entry.outputs)]
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        names = ([f"input{i}" for i in range(len(entry.inputs))]
                 + [f"output{i}" for i in range(len(entry.outputs))])
    params = [tirx.decl_buffer(shape, dtype, name, data_alignment=_itemsize(dtype),
                               offset_factor=1)
              for name, (_, shape, dtype) in zip(names, (*entry.inputs, *entry.outputs))]
    lets = []
    buffers = list(params)
    for index, tensor in enumerate(entry.tensors):
        pointer = tirx.Var(f"tensor{index}", tvm.ir.PointerType(tvm.ir.PrimType(tensor.dtype)))
        region = "dlsys_deploy_working" if tensor.data is None else "dlsys_deploy_weights"
        offset = tensor.offset if tensor.data is None else weights_offset[index]
        # Returning the typed pointer that a buffer's data must be (call_extern's are untyped).
        lets.append((pointer, tvm.ir.Call(tvm.ir.Op.get("tirx.call_extern"),
                                          [tvm.ir.StringImm(region),
                                           tirx.IntImm("int64", offset)],
                                          ret_ty=pointer.ty)))
        buffers.append(tirx.decl_buffer((tensor.elements,), tensor.dtype, f"tensor{index}",
                                        data=pointer))

    def address(view: ArgumentView):
        buffer = buffers[view.buffer]
        flat = np.unravel_index(view.offset, [int(d) for d in buffer.shape])
        return tirx.address_of(tirx.BufferLoad(buffer, [tirx.IntImm("int64", int(i))
                                                        for i in flat]))

    statements = []
    for kernel, call in entry.calls:
        arrays = [tirx.call_intrin(
            "handle", "tirx.tvm_stack_make_array", address(view),
            tirx.call_intrin("handle", "tirx.tvm_stack_make_shape",
                             *[tirx.IntImm("int64", d) for d in view.shape]),
            tirx.IntImm("int32", 0), tirx.IntImm("int32", len(view.shape)),
            tirx.const(0, view.dtype), tirx.IntImm("int32", 0)) for view in call.args]
        # Called by symbol: the kernels are linked into the same library (export_library
        # merges modules built to machine code, so there are no imports to look them up in).
        statements.append(tirx.Evaluate(tirx.call_cpacked(
            f"__tvm_ffi_{symbols[id(kernel)]}", *arrays)))
    for output, view in entry.copies:
        nbytes = int(np.prod(view.shape)) * _itemsize(view.dtype)
        target = tirx.BufferLoad(params[output], [tirx.IntImm("int64", 0)] * len(view.shape))
        statements.append(tirx.Evaluate(tirx.call_extern(
            "handle", "memcpy", tirx.address_of(target), address(view),
            tirx.IntImm("int64", nbytes))))
    check = tirx.call_extern("int32", "dlsys_deploy_check_cpu")
    body = tirx.SeqStmt([
        tirx.IfThenElse(check != 0, tirx.Evaluate(tirx.tvm_throw_last_error()), None),
        *[stmt for (pointer, value), buffer in zip(lets, buffers[len(params):])
          for stmt in (tirx.LetStmt(pointer, value), tirx.DeclBuffer(buffer, data=pointer))],
        *statements, tirx.Evaluate(0)])
    return tirx.PrimFunc(params, body).with_attr("global_symbol", name)


def _support_source(weights_file: Path, weights_bytes: int, working_bytes: int,
                    features: Sequence[str]) -> str:
    """The C part of the library: weights (``.incbin``), working memory, and the check of
    the CPU features the kernels were built with."""
    checks = "\n".join(f'    if (!__builtin_cpu_supports("{f}")) append(missing, "{f}");'
                       for f in features)
    path = str(weights_file).replace("\\", "\\\\").replace('"', '\\"')
    return f"""/* Generated by dlsys.compile. */
#include <stdint.h>
#include <string.h>

void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message);

__asm__(".section .rodata\\n"
        ".balign {ALIGNMENT}\\n"
        "dlsys_weights_start:\\n"
        ".incbin \\"{path}\\"\\n"
        ".previous\\n");
extern const char dlsys_weights_start[] __asm__("dlsys_weights_start");
static char working[{max(working_bytes, 1)}] __attribute__((aligned({ALIGNMENT})));

const void* dlsys_deploy_weights(int64_t offset) {{ return dlsys_weights_start + offset; }}
void* dlsys_deploy_working(int64_t offset) {{ return working + offset; }}
const int64_t dlsys_deploy_weights_bytes = {weights_bytes};

static void append(char* text, const char* feature) {{
    strcat(text, " ");
    strcat(text, feature);
}}

/* 0 when this CPU has every feature the kernels were built with; else -1, with an error
   naming the missing ones (running them would die of an illegal instruction). */
int dlsys_deploy_check_cpu(void) {{
    static int checked = 0;
    if (checked == 1) return 0;
    char missing[1024] = "";
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
{checks}
#endif
    if (missing[0] != 0) {{
        char message[1200];
        strcpy(message, "this library's kernels were compiled for CPU features this CPU "
               "lacks:");
        strcat(message, missing);
        strcat(message, "; compile it again for this CPU, or for a baseline it has "
               "(dlsys compile --target x86-64-v3)");
        TVMFFIErrorSetRaisedFromCStr("RuntimeError", message);
        return -1;
    }}
    checked = 1;
    return 0;
}}
"""


def _place(sizes: list[int]) -> tuple[list[int], int]:
    """Offsets of buffers of ``sizes`` bytes laid side by side, each 64-byte aligned."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // ALIGNMENT) * ALIGNMENT
    return offsets, end


def _runtime_library() -> Path:
    """TVM's runtime library (parallel launch, workspace allocation), shipped beside."""
    path = Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so"
    if not path.exists():
        raise DlsysError(f"dlsys.compile: TVM's runtime library is not at {path}")
    return path


def compile(model, input_shapes=None, path: str | os.PathLike = "model.so",  # noqa: A001
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
    graph, shapes = _graph_of(model, input_shapes)
    kernel_target = resolve_target(target)
    path = Path(path)
    entries: list[tuple[str, _Entry]] = []
    with build.llvm_target(kernel_target):
        if batch_sizes is None:
            entries.append(("run", _compile_entry(graph, shapes)))
        for batch in _batch_sizes(batch_sizes):
            batched = {n: (batch, *s[1:]) for n, s in shapes.items()}
            entries.append((f"run_b{batch}", _compile_entry(graph, batched)))
        if batch_sizes is not None:
            entries.insert(0, ("run", entries[0][1]))
    return _link(entries, path, kernel_target,
                 [*target_features(kernel_target), *require_cpu_features])


def _batch_sizes(batch_sizes) -> list[int]:
    if batch_sizes is None:
        return []
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or \
            not batch_sizes or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
        raise ArgumentError(f"dlsys.compile: batch_sizes must be a list of positive ints, got "
                            f"{batch_sizes!r}")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise ArgumentError(f"dlsys.compile: batch_sizes lists a size twice: {batch_sizes}")
    return list(batch_sizes)


def _link(entries: list[tuple[str, _Entry]], path: Path, kernel_target: tvm.target.Target,
          features: Sequence[str]) -> Path:
    """Build the kernels (one LLVM module), the entries (the host module importing it) and
    the C support file, and link them into ``path`` beside a copy of TVM's runtime."""
    symbols: dict[int, str] = {}
    kernels = {}
    for _, entry in entries:
        for kernel, _ in entry.calls:
            if id(kernel) not in symbols:
                symbols[id(kernel)] = f"k{len(symbols)}"
                kernels[id(kernel)] = kernel
    functions = {}
    for key, kernel in kernels.items():
        if kernel.source is None:
            raise DlsysError(f"dlsys.compile: kernel {kernel.name} keeps no source to rebuild")
        (func,) = kernel.source(symbols[key]).functions.values()
        functions[symbols[key]] = func
    # Weights: each distinct value once (batch sizes share their prepacked weights).
    blobs: dict[bytes, int] = {}
    chunks: list[bytes] = []
    weights_offset: list[dict[int, int]] = []
    working_bytes = 0
    for _, entry in entries:
        offsets = {}
        for index, tensor in enumerate(entry.tensors):
            if tensor.data is None:
                continue
            digest = hashlib.sha256(tensor.data).digest()
            if digest not in blobs:
                blobs[digest] = len(chunks)
                chunks.append(tensor.data)
            offsets[index] = blobs[digest]
        weights_offset.append(offsets)
        working = [t for t in entry.tensors if t.data is None]
        placed, end = _place([t.elements * _itemsize(t.dtype) for t in working])
        for tensor, offset in zip(working, placed):
            tensor.offset = offset
        working_bytes = max(working_bytes, end)
    chunk_offsets, weights_bytes = _place([len(c) for c in chunks])
    host_funcs = {}
    for (name, entry), offsets in zip(entries, weights_offset):
        byte_offsets = {i: chunk_offsets[c] for i, c in offsets.items()}
        host_funcs[name] = _entry_function(entry, symbols, byte_offsets, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dlsys-compile-") as scratch:
        scratch = Path(scratch)
        weights_file = scratch / "weights.bin"
        with open(weights_file, "wb") as out:
            for chunk, offset in zip(chunks, chunk_offsets):
                out.seek(offset)
                out.write(chunk)
            out.truncate(weights_bytes)
        support_c = scratch / "support.c"
        support_c.write_text(_support_source(weights_file, weights_bytes, working_bytes,
                                             features))
        support_o = scratch / "support.o"
        _run_compiler(["gcc", "-O2", "-fPIC", "-c", str(support_c), "-o", str(support_o)])
        kernels_lib = tvm.tirx.build(tvm.IRModule(functions), target=kernel_target)
        # The entries run before the CPU check passes: built for the plain baseline.
        baseline = tvm.target.Target({"kind": "llvm", "mtriple": str(
            kernel_target.attrs.get("mtriple", codegen.llvm_get_system_triple()))})
        # One module per entry: LLVM renames a second declaration of a kernel called by
        # symbol in one module (k0.38), which then does not link.
        host_lib, *others = [tvm.tirx.build(tvm.IRModule({name: func}), target=baseline)
                             for name, func in host_funcs.items()]
        for module in (*others, kernels_lib):
            host_lib.import_module(module)
        runtime = path.parent / "libtvm_runtime.so"
        if not runtime.exists() or runtime.stat().st_size != _runtime_library().stat().st_size:
            shutil.copyfile(_runtime_library(), runtime)
        partial = path.with_name(path.name + ".partial")
        host_lib.export_library(str(partial), addons=[str(support_o)], options=[
            f"-L{path.parent.resolve()}", "-Wl,--no-as-needed", "-l:libtvm_runtime.so",
            "-Wl,-rpath,$ORIGIN"], workspace_dir=str(scratch))
        os.replace(partial, path)
    return path


def _run_compiler(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise DlsysError(f"dlsys.compile needs a C compiler ({command[0]}) to link the "
                         f"library") from None
    except subprocess.CalledProcessError as err:
        raise DlsysError(f"dlsys.compile: {' '.join(command)} failed:\n{err.stderr}") from None
