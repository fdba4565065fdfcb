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
