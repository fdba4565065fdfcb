"""One optimiser step over every MLP parameter: dlsys's fused kernel against PyTorch's
``optimizer.step()``.

The parameters are those of the 784-256-100-10 MLP, weights and biases (227,670 floats in
six tensors); the gradients are fixed random tensors, since a step's cost does not depend on
their values (their global norm, about 4.8, is above the clipping limit, so the clip acts).
Each optimiser (SGD, SGD with momentum 0.9, Adam, AdamW, and AdamW clipping the gradients'
global norm to 1.0: dlsys's ``step(grads, max_grad_norm=1.0)``, one kernel, against
PyTorch's ``clip_grad_norm_`` then ``step()``) is timed as the median over
many repeats of a run of consecutive steps, after warm-up steps (which compile or load the
kernel). dlsys and PyTorch each run in a process of their own, with the same thread count,
so that one's spinning thread pool does not steal the cores from the other; the two take
turns for several rounds and each figure is the median of its rounds, so that a busy spell
of a shared machine weighs on both sides alike.

    python benchmarks/bench_optim.py [--steps 50] [--repeats 40] [--rounds 3] [--threads N]

A second table times a whole training step of that MLP (batch 64, AdamW), without and with
the clip: dlsys's ``minimize(loss, max_grad_norm=1.0)`` against PyTorch's forward, backward,
``clip_grad_norm_`` and ``step()``.

``--threads`` sets both thread counts (default: dlsys's, one per physical core); on a shared
machine, one thread is the steadier measurement, since a parallel kernel waits for its
slowest thread.

PyTorch is timed when it is importable (``pip install torch==2.13.0``); it is never a
dependency of dlsys. Besides its default ``step()``, its ``foreach`` and ``fused`` variants
are timed where this PyTorch supports them on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# The MLP's parameters (dlsys layout: weights are (in, out); PyTorch's transpose has the same
# number of elements, and an elementwise update does not care).
SHAPES = [(784, 256), (256,), (256, 100), (100,), (100, 10), (10,)]
# Column name: (optimiser, its settings, the clipping limit of the gradients' global norm).
OPTIMISERS = {
    "SGD": ("SGD", {"lr": 0.01}, None),
    "SGD momentum 0.9": ("SGD", {"lr": 0.01, "momentum": 0.9}, None),
    "Adam": ("Adam", {"lr": 1e-3}, None),
    "AdamW": ("AdamW", {"lr": 1e-3}, None),
    "AdamW clip 1.0": ("AdamW", {"lr": 1e-3}, 1.0),
}
WARMUP_STEPS = 20
# A whole training step of that MLP (forward, cross-entropy, backward, AdamW), on one batch
# of this many random images, without and with the clip: what clipping costs a step.
BATCH = 64
TRAIN = {"train AdamW": None, "train AdamW clip 1.0": 1.0}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (lscpu failed)"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def arrays(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) * 0.01 for s in SHAPES]


def time_steps(step, steps: int, repeats: int) -> float:
    """Median microseconds per step over ``repeats`` runs of ``steps`` consecutive steps."""
    return time_alternating({"": step}, steps, repeats)[""]


def time_alternating(named_steps: dict, steps: int, repeats: int) -> dict[str, float]:
    """``time_steps`` of several steps whose samples take turns, so that a busy spell of a
    shared machine weighs on each alike (the clip's cost is smaller than such spells)."""
    for step in named_steps.values():
        for _ in range(WARMUP_STEPS):
            step()
    samples: dict[str, list[float]] = {name: [] for name in named_steps}
    for _ in range(repeats):
        for name, step in named_steps.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            samples[name].append((time.perf_counter() - start) / steps * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    return rng.standard_normal((BATCH, 784)).astype(np.float32), rng.integers(0, 10, BATCH)


def dlsys_train_step(max_norm: float | None):
    from dlsys import autodiff as ad
    from dlsys import nn
    from dlsys.nn import functional as F
    from dlsys.optim import AdamW

    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    x, y = ad.Variable("x"), ad.Variable("y")
    step = AdamW(model.parameters()).minimize(F.cross_entropy(model(x), y),
                                              max_grad_norm=max_norm)
    images, labels = batch()
    feeds = {x: images, y: labels.astype(np.float32)}
    return lambda: step(feeds)


def torch_train_step(torch, max_norm: float | None, options: dict):
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    optimizer = torch.optim.AdamW(model.parameters(), **options)
    images, labels = (torch.from_numpy(a) for a in batch())

    def step() -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm,
                                           foreach=True if options else None)
        optimizer.step()
        return loss.item()
    return step


def measure_dlsys(steps: int, repeats: int) -> dict:
    import tvm

    from dlsys import optim

    threads = int(os.environ["TVM_NUM_THREADS"])  # checked or set by importing dlsys
    grads = [tvm.runtime.tensor(g) for g in arrays(1)]
    results = {}
    for name, (kind, settings, clip) in OPTIMISERS.items():
        params = [tvm.runtime.tensor(p) for p in arrays(0)]
        optimizer = getattr(optim, kind)(params, **settings)
        results[name] = time_steps(lambda o=optimizer, c=clip: o.step(grads, max_grad_norm=c),
                                   steps, repeats)
    results.update(time_alternating({name: dlsys_train_step(max_norm)
                                     for name, max_norm in TRAIN.items()}, steps, repeats))
    return {"threads": threads, "rows": {"dlsys": results}}


def measure_torch(steps: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    rows: dict[str, dict[str, float]] = {}
    for variant in ("default", "foreach", "fused"):
        results = {}
        for name, (kind, settings, clip) in OPTIMISERS.items():
            params = [torch.nn.Parameter(torch.from_numpy(p)) for p in arrays(0)]
            grads = [torch.from_numpy(g) for g in arrays(1)]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            options = {} if variant == "default" else {variant: True}
            try:
                optimizer = getattr(torch.optim, kind)(params, **settings, **options)
                optimizer.step()
            except (RuntimeError, ValueError, TypeError):  # not supported on this CPU build
                continue
            step = optimizer.step
            if clip is not None:
                step = clipped_torch_step(torch, optimizer, params, grads, clip,
                                          foreach=variant != "default")
            results[name] = time_steps(step, steps, repeats)
        if "AdamW" in results:  # this variant of AdamW runs here
            results.update(time_alternating(
                {name: torch_train_step(torch, max_norm, options)
                 for name, max_norm in TRAIN.items()}, steps, repeats))
        if results:
            rows[f"PyTorch {torch.__version__} {variant}"] = results
    return {"threads": torch.get_num_threads(), "rows": rows}


def clipped_torch_step(torch, optimizer, params: list, grads: list, max_norm: float,
                       foreach: bool):
    """``clip_grad_norm_`` then ``step()``; the clip scales the gradients in place, so each
    step first puts the fixed gradients back (``torch._foreach_copy_``, one call, timed too:
    a training step's backward pass writes fresh gradients instead)."""
    parameters = list(params)
    targets = [p.grad for p in parameters]

    def step() -> None:
        torch._foreach_copy_(targets, grads)
        torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=foreach or None)
        optimizer.step()
    return step


def child(system: str, steps: int, repeats: int, threads: int = 0) -> dict:
    command = [sys.executable, __file__, "--system", system, "--steps", str(steps),
               "--repeats", str(repeats), "--threads", str(threads)]
    env = dict(os.environ)
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"
        return {"error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="consecutive steps per sample")
    parser.add_argument("--repeats", type=int, default=40, help="samples; the median is shown")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each process")
    parser.add_argument("--system", choices=("dlsys", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both (default: dlsys's choice)")
    args = parser.parse_args()
    if args.system == "dlsys":
        print(json.dumps(measure_dlsys(args.steps, args.repeats)))
        return
    if args.system == "torch":
        print(json.dumps(measure_torch(args.steps, args.repeats, args.threads)))
        return

    rounds: list[dict[str, dict[str, float]]] = []
    threads = args.threads
    for _ in range(args.rounds):
        ours = child("dlsys", args.steps, args.repeats, args.threads)
        if "error" in ours:
            sys.exit(f"dlsys failed: {ours['error']}")
        threads = ours["threads"]
        theirs = child("torch", args.steps, args.repeats, threads)
        if "error" in theirs:
            print(f"PyTorch: skipped ({theirs['error']})")
            theirs = {"rows": {}}
        rounds.append({**ours["rows"], **theirs["rows"]})
    rows = {system: {n: statistics.median(r[system][n] for r in rounds)
                     for n in rounds[0][system]} for system in rounds[0]}

    print(f"CPU: {cpu_name()}, {threads} threads for dlsys and PyTorch")
    print(f"one optimiser step over the MLP 784-256-100-10's parameters "
          f"({sum(int(np.prod(s)) for s in SHAPES)} floats in {len(SHAPES)} tensors), "
          f"median of {args.repeats} x {args.steps} steps, median of {args.rounds} rounds, "
          f"microseconds per step")
    print_table(rows, list(OPTIMISERS))
    print(f"one training step of that MLP on a batch of {BATCH} (forward, cross-entropy, "
          f"backward, AdamW lr 1e-3), without and with clipping the gradients' global norm "
          f"to 1.0, microseconds per step")
    print_table(rows, list(TRAIN))
    print("(a ratio above 1: PyTorch's step takes that many times dlsys's)")


def print_table(rows: dict[str, dict[str, float]], names: list[str]) -> None:
    print(f"{'':28s}" + "".join(f"{n:>22s}" for n in names))
    for system, results in rows.items():
        print(f"{system:28s}" + "".join(f"{results[n]:22.1f}" if n in results else f"{'-':>22s}"
                                        for n in names))
    base = rows["dlsys"]
    for system, results in rows.items():
        if system == "dlsys":
            continue
        ratios = "".join(f"{results[n] / base[n]:21.2f}x" if n in results else f"{'-':>22s}"
                         for n in names)
        print(f"{system + ' / dlsys':28s}{ratios}")


if __name__ == "__main__":
    main()
