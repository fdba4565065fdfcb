"""Data-parallel training on one machine: 1 MPI rank x 2 TVM threads against 2 ranks x 1
thread, for the MLP (784-256-100-10) and LeNet-5, at the same global batch.

Each configuration runs as its own ``mpirun`` job of this file (``--worker``), which times
training steps of ``dlsys.distributed.DataParallel`` on random images: the executor's run
(forward and backward on the rank's shard), the allreduce of the loss and gradients (one call
over the contiguous buffer, including any wait for the other rank), and the optimiser's
update. It also times the allreduce alone after a barrier, which is the communication
itself. The configurations take turns for ``--rounds`` rounds; figures are the medians.

``run ms`` is rank 0's, ``slowest`` the slowest rank's: rank 0's allreduce includes waiting
for it, and ``alone`` is what remains without the wait.

From the one-rank compute time per step ``T`` and the gradient bytes ``S`` it prints the
ring-allreduce model of K machines (README, "Several processes and machines"): each machine
sends and receives ``2 (K-1)/K S`` per step, so without overlap the step stops shrinking
once that takes as long as the machine's share of the compute, ``T / K``, that is from
``K = 1 + T bw / (2 S)`` on.

    python benchmarks/bench_distributed.py [--steps 30] [--rounds 2]

Needs mpi4py and mpirun (``pip install 'dlsys[distributed]'``); skipped without them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = {"mlp": 1000, "lenet": 256}  # model -> global batch
CONFIGS = [(1, 2), (2, 1)]  # (ranks, TVM threads per rank)
WARMUP_STEPS = 5
GBIT = 1e9 / 8  # bytes per second in one Gbit/s


def worker(model_name: str, batch: int, steps: int) -> None:
    """One rank's timings; rank 0 prints them as one JSON line."""
    import numpy as np

    from dlsys import autodiff as ad
    from dlsys import distributed, optim
    from dlsys.frontend.models import build_model
    from dlsys.frontend.settings import INPUT_SHAPES
    from dlsys.nn import functional as F

    size = distributed.world_size()
    local = batch // size
    model = build_model(model_name, seed=0)
    x, labels = ad.Variable("x"), ad.Variable("labels")
    model.train()
    params = model.parameters()
    parallel = distributed.DataParallel(F.cross_entropy(model(x), labels), params)
    optimizer = optim.SGD(params, 0.01)
    rng = np.random.default_rng(distributed.rank())
    feeds = {x: rng.random((local, *INPUT_SHAPES[model_name]), dtype=np.float32),
             labels: rng.integers(0, 10, local).astype(np.float32)}
    runs, reduces, updates = [], [], []
    for step in range(WARMUP_STEPS + steps):
        started = time.perf_counter()
        _, *grads = parallel.executor.run(feeds)
        ran = time.perf_counter()
        parallel.reduce()
        reduced = time.perf_counter()
        optimizer.step(grads)
        updated = time.perf_counter()
        if step >= WARMUP_STEPS:
            runs.append(ran - started)
            reduces.append(reduced - ran)
            updates.append(updated - reduced)
    flat = parallel.executor.contiguous_buffer()
    alone, slowest = [], statistics.median(runs)
    if size > 1:
        from mpi4py import MPI

        # The allreduce waits for the rank whose run took longest: name that run too.
        slowest = max(MPI.COMM_WORLD.allgather(slowest))
        for _ in range(steps):
            MPI.COMM_WORLD.Barrier()
            started = time.perf_counter()
            distributed.allreduce_(flat)
            alone.append(time.perf_counter() - started)
    if distributed.rank() == 0:
        print(json.dumps({
            "run": statistics.median(runs), "run_slowest": slowest,
            "allreduce": statistics.median(reduces),
            "update": statistics.median(updates),
            "allreduce_alone": statistics.median(alone) if alone else 0.0,
            "grad_bytes": sum(int(np.prod(p.data.shape)) for p in params) * 4,
            "buffer_bytes": int(flat.shape[0]) * 4}), flush=True)


def find_mpirun() -> str | None:
    beside = Path(sys.prefix) / "bin" / "mpirun"
    return str(beside) if beside.exists() else shutil.which("mpirun")


def launch(mpirun: str, model: str, ranks: int, threads: int, steps: int) -> dict:
    # Each rank of several bound to a core of its own (Open MPI's default, unless told to
    # oversubscribe): an unbound rank waiting in a collective yields its CPU, and measured
    # here an allreduce of 1 MiB then takes about 24 ms instead of 0.1 ms. One rank is left
    # unbound so that its threads may use every core.
    argv = [mpirun, "-n", str(ranks), "--bind-to", "core" if ranks > 1 else "none"]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    argv += [sys.executable, __file__, "--worker", model, "--steps", str(steps)]
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, MODELS[args.worker], args.steps)
        return
    mpirun = find_mpirun()
    if importlib.util.find_spec("mpi4py") is None or mpirun is None:
        print("bench_distributed: skipped, needs mpi4py and mpirun "
              "(pip install 'dlsys[distributed]')")
        return
    from dlsys.testing.machine import cpu_description

    print(f"CPU: {cpu_description()}; medians of {args.steps} steps, {args.rounds} rounds")
    for model, batch in MODELS.items():
        rounds = {config: [] for config in CONFIGS}
        for _ in range(args.rounds):
            for ranks, threads in CONFIGS:
                rounds[(ranks, threads)].append(launch(mpirun, model, ranks, threads,
                                                       args.steps))
        figures = {config: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                   for config, runs in rounds.items()}
        print(f"\n{model}, global batch {batch}, gradients "
              f"{figures[CONFIGS[0]]['grad_bytes'] / 2**20:.2f} MiB "
              f"(contiguous buffer {figures[CONFIGS[0]]['buffer_bytes'] / 2**20:.2f} MiB)")
        print(f"{'ranks x threads':>16s} {'step ms':>8s} {'run ms':>7s} {'slowest':>7s} "
              f"{'update ms':>9s} {'allreduce ms':>12s} {'share':>6s} {'alone ms':>8s} "
              f"{'images/s':>9s}")
        for (ranks, threads), f in figures.items():
            step = f["run"] + f["allreduce"] + f["update"]
            print(f"{f'{ranks} x {threads}':>16s} {1e3 * step:8.2f} {1e3 * f['run']:7.2f} "
                  f"{1e3 * f['run_slowest']:7.2f} {1e3 * f['update']:9.3f} "
                  f"{1e3 * f['allreduce']:12.3f} {f['allreduce'] / step:6.1%} "
                  f"{1e3 * f['allreduce_alone']:8.3f} {batch / step:9.0f}")
        one = figures[CONFIGS[0]]
        compute = one["run"] + one["update"]
        for gbit in (10, 100):
            turn = 1 + compute * gbit * GBIT / (2 * one["grad_bytes"])
            print(f"ring model at {gbit} Gbit/s: compute {1e3 * compute:.2f} ms per step on "
                  f"one machine; the allreduce outgrows each machine's share from "
                  f"K = {turn:.0f} machines")


if __name__ == "__main__":
    main()
