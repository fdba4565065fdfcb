"""What the schedules need to know about a CPU, read from LLVM's view of it and from the
kernel's cache description: vector width, vector register count, L1 and L2 sizes.

Nothing here is a constant of one machine: an AVX2 CPU (16 registers of 32 bytes), an
AVX-512 one (32 of 64) and an aarch64 one with NEON (32 of 16) each get their own facts, and
the matmul's register tiles are chosen for the register file at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import tvm
from tvm.target import codegen

# When /sys says nothing: a common per-core L2 of the CPUs dlsys meets (Zen 3's), and L1 data
# cache (Zen 3's and 4's, Skylake's).
DEFAULT_L2_BYTES = 512 * 1024
DEFAULT_L1_BYTES = 32 * 1024

# Register tiles (rows, vectors per row, preference) for the matmul's accumulators: rows x
# vectors accumulators, plus the vectors loaded from B and one broadcast of A, must fit the
# register file; fuller tiles reuse each load for more FMAs, hence their higher preference.
# Vector counts are powers of two: LLVM scalarises the odd-sized vector types three would
# give. The 16-register table was measured on znver3; the 32-register one ranks tiles by
# FMAs per load (rows x vectors / (rows + vectors)) and leaves the final say to the timed
# search.
TILE_SHAPES = {
    16: ((6, 2, 1.0), (5, 2, 0.93), (4, 2, 0.82), (8, 1, 0.75), (3, 2, 0.65), (2, 2, 0.5),
         (6, 1, 0.5), (1, 2, 0.3)),
    32: ((6, 4, 1.0), (5, 4, 0.92), (14, 2, 0.73), (12, 2, 0.71), (4, 4, 0.83), (8, 2, 0.67),
         (3, 4, 0.71), (6, 2, 0.63), (16, 1, 0.39), (4, 2, 0.56), (2, 4, 0.56), (2, 2, 0.42),
         (1, 4, 0.33)),
}


@dataclass(frozen=True)
class CpuFacts:
    """One CPU as the schedules see it."""

    name: str                 # LLVM's name (znver3, skylake-avx512, neoverse-n1...)
    vector_bytes: int         # one vector register
    vector_registers: int
    l2_bytes: int = DEFAULT_L2_BYTES
    l1_bytes: int = DEFAULT_L1_BYTES

    def lanes(self, dtype: str) -> int:
        """Elements of ``dtype`` in one vector register."""
        return max(1, self.vector_bytes // np.dtype(dtype).itemsize)

    @property
    def tile_shapes(self) -> tuple[tuple[int, int, float], ...]:
        """The matmul register tiles for this register file (the largest table that fits)."""
        fitting = [count for count in TILE_SHAPES if count <= self.vector_registers]
        return TILE_SHAPES[max(fitting)] if fitting else ((1, 1, 1.0),)


def facts_for(cpu: str, triple: str | None = None, l2_bytes: int = DEFAULT_L2_BYTES,
              l1_bytes: int = DEFAULT_L1_BYTES) -> CpuFacts:
    """The facts LLVM knows about ``cpu`` (as in ``-mcpu``), for any CPU, not only this one."""
    attrs = {"kind": "llvm", "mcpu": cpu}
    if triple:
        attrs["mtriple"] = triple
    target = tvm.target.Target(attrs)

    def has(feature: str) -> bool:
        return bool(codegen.llvm_cpu_has_features([feature], target))

    if (triple or "").startswith("aarch64") or has("neon"):
        return CpuFacts(cpu, 16, 32, l2_bytes, l1_bytes)       # NEON: 32 registers of 128 bits
    if has("avx512f"):
        return CpuFacts(cpu, 64, 32, l2_bytes, l1_bytes)       # zmm0-31
    if has("avx"):
        return CpuFacts(cpu, 32, 16, l2_bytes, l1_bytes)       # ymm0-15
    return CpuFacts(cpu, 16, 16, l2_bytes, l1_bytes)           # SSE: xmm0-15


def _cache_bytes(level: int) -> int | None:
    """This machine's per-core data or unified cache of ``level``, from /sys."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) != level or \
                    (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        units = {"K": 1024, "M": 1024 * 1024}
        try:
            return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        except ValueError:
            return None
    return None


@cache
def host() -> CpuFacts:
    """This machine's CPU."""
    return facts_for(str(codegen.llvm_get_system_cpu()), str(codegen.llvm_get_system_triple()),
                     _cache_bytes(2) or DEFAULT_L2_BYTES, _cache_bytes(1) or DEFAULT_L1_BYTES)
