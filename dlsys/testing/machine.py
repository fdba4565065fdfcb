"""What machine a benchmark ran on, printed with every figure so that figures from
different CPUs are never mixed up."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

# The vector extensions that decide how fast dlsys's kernels can be, widest first.
_VECTOR_FLAGS = ("avx512f", "avx2", "fma", "neon", "asimd")


@cache
def cpu_description() -> str:
    """``"AMD EPYC 9R14 (LLVM: znver4; avx512f avx2 fma), 2 cores"``, from /proc/cpuinfo
    and LLVM's name for the host CPU."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model == "unknown CPU":
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        import tvm

        llvm = str(tvm.target.codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - a description must never fail a benchmark
        llvm = "?"
    vectors = " ".join(f for f in _VECTOR_FLAGS if f in flags) or "no vector flags"
    return f"{model} (LLVM: {llvm}; {vectors}), {os.cpu_count()} cores"


def measure_in_child(script: str, system: str, threads: int, *arguments: str) -> dict:
    """Run ``script --system SYSTEM --threads N ARGUMENTS`` in a fresh process with
    ``threads`` TVM threads and return the JSON its last line of output holds; exit naming
    the system and the child's last error line if it fails. Benchmarks time each system in
    a process of its own, so one's thread pool never runs beside the other's."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, script, "--system", system, "--threads",
                           str(threads), *arguments], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        sys.exit(f"{system} failed: {lines[-1] if lines else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def take_turns(script: str, systems: tuple[str, ...], threads: int, rounds: int,
               *arguments: str) -> dict[str, list[dict]]:
    """Each system's results (``measure_in_child``) over ``rounds`` rounds in which the
    systems take turns, so that a slow spell of a shared machine weighs on all of them."""
    results: dict[str, list[dict]] = {system: [] for system in systems}
    for _ in range(rounds):
        for system in systems:
            results[system].append(measure_in_child(script, system, threads, *arguments))
    return results


def ratio_table(results: dict[str, list[dict]], ours: str, theirs: str,
                decimals: int = 3) -> list[str]:
    """A markdown table of ``model|batch`` keyed milliseconds: each system's median over its
    rounds and their ratio, ``ours`` over ``theirs``."""
    import statistics

    lines = [f"| model | batch | {ours} ms | {theirs} ms | {ours} / {theirs} |",
             "|---|---|---|---|---|"]
    for key in results[ours][0]:
        mine = statistics.median(r[key] for r in results[ours])
        other = statistics.median(r[key] for r in results[theirs])
        name, batch = key.split("|")
        lines.append(f"| {name} | {batch} | {mine:.{decimals}f} | {other:.{decimals}f} | "
                     f"{mine / other:.2f} |")
    return lines


def call_times(call, repeats: int, warmup: int = 3) -> list[float]:
    """Microseconds of each of ``repeats`` calls of ``call()``, after ``warmup`` calls (a
    benchmark takes their median, or their minimum where the machine's noise is one-sided)."""
    import time

    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def comparison_parser(description: str, rounds: int = 3):
    """The flags of a benchmark timing dlsys against another runtime in child processes:
    ``--rounds``, ``--threads``, and the hidden ``--system`` and ``--models`` a child gets
    (``take_turns``)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help="turns of each process")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both (default: dlsys's, one per physical core)")
    parser.add_argument("--system", choices=("dlsys", "onnxruntime", "torch"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    return parser


def answered_as_child(args, measure) -> bool:
    """In a child process (``--system`` given): print ``measure(system, models, threads)``
    as the JSON line ``measure_in_child`` reads, and say so."""
    import json

    if not args.system:
        return False
    print(json.dumps(measure(args.system, json.loads(args.models), args.threads)))
    return True


def onnx_session_maker(system: str, threads: int):
    """``path -> session`` for ``system``: dlsys's ``InferenceSession``, or onnxruntime's on
    ``threads`` threads (one operator at a time), as the ONNX benchmarks compare them."""
    if system == "dlsys":
        from dlsys.onnx import InferenceSession

        return InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return lambda path: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
