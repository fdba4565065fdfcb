"""The library ``dlsys.compile`` writes: the kernels as one LLVM module, one host entry per
batch size calling them, and a C file holding the weights, the working memory and the
check of the CPU's features, linked into one ``.so`` beside TVM's runtime library."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import tirx
from tvm.target import codegen

from dlsys.deploy.program import Entry, itemsize
from dlsys.errors import DlsysError
from dlsys.graph import IndexBounds
from dlsys.runtime.native import ArgumentView, element_address, stack_tensor

ALIGNMENT = 64
# CPU features the C check can test (names both LLVM and GCC's __builtin_cpu_supports
# know); the check tests those of them the kernels' target has.
GUARDED_FEATURES = ("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma",
                    "f16c", "bmi", "bmi2", "avx512f", "avx512vl", "avx512bw", "avx512dq",
                    "avx512cd", "avx512vnni", "avx512bf16", "avx512ifma", "avx512vbmi",
                    "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq", "avx512fp16", "gfni",
                    "vpclmulqdq", "vaes", "amx-tile", "amx-int8", "amx-bf16")


def _entry_function(entry: Entry, symbols: dict[int, str], weights_offset: dict[int, int],
                    name: str, id_check_numbers: Sequence[int]) -> tirx.PrimFunc:
    """The host function ``name(inputs..., outputs...)``: checks the CPU, then makes the
    entry's calls (kernels by their library names ``symbols[id(kernel)]``), then copies each
    output into the caller's tensor. Weights and working memory are found through the C
    support functions."""
    # Named as the model names them, so that TVM's argument checks name the tensor.
    names = [re.sub(r"\W", "_", name) for name, _, _ in (*entry.inputs, *entry.outputs)]
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        names = ([f"input{i}" for i in range(len(entry.inputs))]
                 + [f"output{i}" for i in range(len(entry.outputs))])
    params = [tirx.decl_buffer(shape, dtype, name, data_alignment=itemsize(dtype),
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
        return element_address(buffers[view.buffer], view.offset)

    statements = []
    for kernel, call in entry.calls:
        arrays = [stack_tensor(buffers[view.buffer], view) for view in call.args]
        # Called by symbol: the kernels are linked into the same library (export_library
        # merges modules built to machine code, so there are no imports to look them up in).
        statements.append(tirx.Evaluate(tirx.call_cpacked(
            f"__tvm_ffi_{symbols[id(kernel)]}", *arrays)))
    for output, view in entry.copies:
        nbytes = int(np.prod(view.shape)) * itemsize(view.dtype)
        target = tirx.BufferLoad(params[output], [tirx.IntImm("int64", 0)] * len(view.shape))
        statements.append(tirx.Evaluate(tirx.call_extern(
            "handle", "memcpy", tirx.address_of(target), address(view),
            tirx.IntImm("int64", nbytes))))
    check = tirx.call_extern("int32", "dlsys_deploy_check_cpu")
    body = tirx.SeqStmt([
        tirx.IfThenElse(check != 0, tirx.Evaluate(tirx.tvm_throw_last_error()), None),
        *[stmt for (number, bounds, _), check_number in zip(entry.id_checks, id_check_numbers)
          for stmt in _id_check(params[number], bounds, check_number)],
        *[stmt for (pointer, value), buffer in zip(lets, buffers[len(params):])
          for stmt in (tirx.LetStmt(pointer, value), tirx.DeclBuffer(buffer, data=pointer))],
        *statements, tirx.Evaluate(0)])
    return tirx.PrimFunc(params, body).with_attr("global_symbol", name)


def _id_check(param: tirx.Buffer, bounds: IndexBounds, number: int) -> list[tirx.Stmt]:
    """Statements refusing, through the C function ``dlsys_deploy_bad_id`` (which names the
    input, the id and where it is), an id of ``param`` outside ``bounds``."""
    count = int(np.prod([int(d) for d in param.shape]))
    flat = tirx.decl_buffer((count,), param.dtype, f"{param.name}_flat", data=param.data,
                            elem_offset=param.elem_offset)
    index = tirx.Var("i", "int32")
    value = tirx.Cast("int64", tirx.BufferLoad(flat, [index]))
    bad = tirx.Or(value < bounds.start, value >= bounds.stop)
    for allowed in bounds.also:
        bad = tirx.And(bad, value != allowed)
    refuse = tirx.SeqStmt([
        tirx.Evaluate(tirx.call_extern("int32", "dlsys_deploy_bad_id",
                                       tirx.IntImm("int32", number),
                                       tirx.Cast("int64", index), value)),
        tirx.Evaluate(tirx.tvm_throw_last_error())])
    loop = tirx.For(index, tirx.IntImm("int32", 0), tirx.IntImm("int32", count),
                    tirx.ForKind.SERIAL, tirx.IfThenElse(bad, refuse, None))
    return [tirx.DeclBuffer(flat, data=param.data), loop]


def _c_string(text: str) -> str:
    """``text`` as a C string literal (bytes outside printable ASCII as octal escapes)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 32 <= byte < 127
                   else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _support_source(weights_file: Path, weights_bytes: int, working_bytes: int,
                    features: Sequence[str], id_checks: Sequence[str]) -> str:
    """The C part of the library: weights (``.incbin``), working memory, and the checks of
    the ids fed and of the CPU features the kernels were built with."""
    return (_memory_source(weights_file, weights_bytes, working_bytes)
            + _id_check_source(id_checks) + _cpu_check_source(features))


def _memory_source(weights_file: Path, weights_bytes: int, working_bytes: int) -> str:
    """C: the weights read from ``weights_file`` into .rodata, the static working memory,
    and the functions giving an entry their addresses."""
    path = str(weights_file).replace("\\", "\\\\").replace('"', '\\"')
    return f"""/* Generated by dlsys.compile. */
#include <stdint.h>
#include <stdio.h>
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
"""


def _id_check_source(id_checks: Sequence[str]) -> str:
    """C: the error of an id out of range, each check's text naming the input and reader."""
    return f"""
static const char* const id_checks[] = {{{", ".join(map(_c_string, id_checks)) or "0"}}};

/* An input's id out of range: -1, with an error naming the input, the reader and the id. */
int dlsys_deploy_bad_id(int check, int64_t position, int64_t value) {{
    char message[1024];
    snprintf(message, sizeof message, "%s: got %lld at flat position %lld", id_checks[check],
             (long long)value, (long long)position);
    TVMFFIErrorSetRaisedFromCStr("IndexError", message);
    return -1;
}}
"""


def _cpu_check_source(features: Sequence[str]) -> str:
    """C: the check that this CPU has every one of ``features``."""
    checks = "\n".join(f'    if (!__builtin_cpu_supports("{f}")) append(missing, "{f}");'
                       for f in features)
    return f"""
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


def link(entries: list[tuple[str, Entry]], path: Path, kernel_target: tvm.target.Target,
         features: Sequence[str]) -> Path:
    """Build the kernels (one LLVM module), the entries (the host module importing it) and
    the C support file, and link them into ``path`` beside a copy of TVM's runtime."""
    symbols, functions = _kernel_functions(entries)
    layout = _Layout.of(entries)
    host_funcs = {}
    id_checks: list[str] = []
    for (name, entry), offsets in zip(entries, layout.weights_offset):
        byte_offsets = {i: layout.chunk_offsets[c] for i, c in offsets.items()}
        numbers = range(len(id_checks), len(id_checks) + len(entry.id_checks))
        id_checks += [text for _, _, text in entry.id_checks]
        host_funcs[name] = _entry_function(entry, symbols, byte_offsets, name, numbers)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dlsys-compile-") as scratch:
        scratch = Path(scratch)
        weights_file = layout.write_weights(scratch / "weights.bin")
        support_c = scratch / "support.c"
        support_c.write_text(_support_source(weights_file, layout.weights_bytes,
                                             layout.working_bytes, features, id_checks))
        support_o = scratch / "support.o"
        _run_compiler(["gcc", "-O2", "-fPIC", "-c", str(support_c), "-o", str(support_o)])
        host_lib = _build_modules(functions, host_funcs, kernel_target)
        runtime = path.parent / "libtvm_runtime.so"
        if not runtime.exists() or runtime.stat().st_size != _runtime_library().stat().st_size:
            shutil.copyfile(_runtime_library(), runtime)
        partial = path.with_name(path.name + ".partial")
        host_lib.export_library(str(partial), addons=[str(support_o)], options=[
            f"-L{path.parent.resolve()}", "-Wl,--no-as-needed", "-l:libtvm_runtime.so",
            "-Wl,-rpath,$ORIGIN"], workspace_dir=str(scratch))
        os.replace(partial, path)
    return path


def _kernel_functions(entries: list[tuple[str, Entry]]) -> tuple[dict[int, str], dict]:
    """Each distinct kernel's library name (``k0``, ``k1``...) by ``id``, and its
    scheduled PrimFunc rebuilt under that name."""
    symbols: dict[int, str] = {}
    functions = {}
    for _, entry in entries:
        for kernel, _ in entry.calls:
            if id(kernel) in symbols:
                continue
            if kernel.source is None:
                raise DlsysError(f"dlsys.compile: kernel {kernel.name} keeps no source to "
                                 f"rebuild")
            symbols[id(kernel)] = f"k{len(symbols)}"
            (func,) = kernel.source(symbols[id(kernel)]).functions.values()
            functions[symbols[id(kernel)]] = func
    return symbols, functions


@dataclass
class _Layout:
    """Where the entries' tensors lie: each distinct weight once in ``chunks`` (batch sizes
    share their prepacked weights), at ``chunk_offsets`` of the weights' region;
    ``weights_offset[e]`` maps entry e's tensor numbers to their chunk; working tensors get
    their ``offset`` set in the working memory, ``working_bytes`` the largest entry's."""

    chunks: list[bytes]
    chunk_offsets: list[int]
    weights_bytes: int
    weights_offset: list[dict[int, int]]
    working_bytes: int

    @classmethod
    def of(cls, entries: list[tuple[str, Entry]]) -> _Layout:
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
            placed, end = _place([t.elements * itemsize(t.dtype) for t in working])
            for tensor, offset in zip(working, placed):
                tensor.offset = offset
            working_bytes = max(working_bytes, end)
        chunk_offsets, weights_bytes = _place([len(c) for c in chunks])
        return cls(chunks, chunk_offsets, weights_bytes, weights_offset, working_bytes)

    def write_weights(self, path: Path) -> Path:
        """The weights' region as a file, for the assembler's ``.incbin``."""
        with open(path, "wb") as out:
            for chunk, offset in zip(self.chunks, self.chunk_offsets):
                out.seek(offset)
                out.write(chunk)
            out.truncate(self.weights_bytes)
        return path


def _build_modules(functions: dict, host_funcs: dict, kernel_target: tvm.target.Target):
    """The kernels as one LLVM module for ``kernel_target``, and one host module per entry
    for the plain baseline, all imported into the first entry's module."""
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
    return host_lib


def _run_compiler(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise DlsysError(f"dlsys.compile needs a C compiler ({command[0]}) to link the "
                         f"library") from None
    except subprocess.CalledProcessError as err:
        raise DlsysError(f"dlsys.compile: {' '.join(command)} failed:\n{err.stderr}") from None
