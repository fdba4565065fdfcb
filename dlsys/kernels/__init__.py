"""Kernel library: compute definitions, CPU schedules and cached builders.

Importing it sizes TVM's CPU thread pool to one thread per physical core (unpinned), or to
``$TVM_NUM_THREADS`` where that is a positive integer no larger than the CPUs available
(see below).
"""

from __future__ import annotations

import os
import warnings


def _allowed_cpus() -> set[int] | None:
    """The logical CPUs this process may run on, or None where the OS does not say (not Linux)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return None


def available_cpus() -> int:
    """How many logical CPUs this process may run on."""
    cpus = _allowed_cpus()
    return max(1, len(cpus)) if cpus is not None else os.cpu_count() or 1


def physical_cores() -> int:
    """Cores this process may run on, each counted once however many hardware threads it has."""
    cpus = _allowed_cpus()
    if cpus is None:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(topology + "physical_package_id") as package, \
                    open(topology + "core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def thread_count(explicit: str | None) -> int:
    """The size of TVM's CPU thread pool: ``explicit`` (``$TVM_NUM_THREADS``) if sensible.

    A value that is not a positive integer falls back to one thread per physical core, and
    one above the logical CPUs available is clamped to them, each with a warning: TVM would
    otherwise start that many threads at the first parallel kernel (100000 hangs the
    process), and more threads than CPUs only wait for each other.
    """
    default = physical_cores()
    if explicit is None:
        return default
    try:
        value = int(explicit.strip())
    except ValueError:
        value = 0
    if value <= 0:
        warnings.warn(f"TVM_NUM_THREADS={explicit!r} is not a positive integer; using "
                      f"{default} (one thread per core)", RuntimeWarning, stacklevel=2)
        return default
    cpus = available_cpus()
    if value > cpus:
        warnings.warn(f"TVM_NUM_THREADS={value} is more than the {cpus} CPUs available; "
                      f"using {cpus}", RuntimeWarning, stacklevel=2)
        return cpus
    return value


# TVM sizes its pool as half the logical CPUs on x86, assuming two hyper-threads per core; on
# a VM with one thread per core (this project's 2-core machine) that runs every parallel
# kernel on one core. The pool reads this variable when it is first created, at the first
# parallel kernel call, so setting it at import is early enough; a sensible explicit value
# wins.
os.environ["TVM_NUM_THREADS"] = str(thread_count(os.environ.get("TVM_NUM_THREADS")))

# TVM pins each worker of its pool to a core. On a VM of 2 vCPUs that pin lands on the core
# the Python thread runs on in some processes, and every parallel kernel then waits for a
# worker sharing its core: the MLP's batch-1 run took 10 us in one process and 14-19 us in
# another. Unpinned, the OS places them: 10-11 us in every process, and training epochs
# as fast (0.33-0.36 s either way, znver4). A value the user sets wins.
os.environ.setdefault("TVM_BIND_THREADS", "0")
