"""Kernel library: compute definitions, CPU schedules and cached builders.

Importing it sizes TVM's CPU thread pool to one thread per physical core (see below).
"""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Cores this process may run on, each counted once however many hardware threads it has."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
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


# TVM sizes its pool as half the logical CPUs on x86, assuming two hyper-threads per core; on
# a VM with one thread per core (this project's 2-core machine) that runs every parallel
# kernel on one core. The pool reads this variable when it is first created, at the first
# parallel kernel call, so setting it at import is early enough; an explicit value wins.
os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))
