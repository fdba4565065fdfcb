"""MLP training epoch time: dlsys (tuned and naive schedules), plain numpy, and PyTorch.

One epoch is 60 steps of the 784-256-100-10 MLP at batch 1000 (the MNIST training set), each
step the forward pass, the mean softmax cross-entropy, all six gradients and the SGD update.
Every figure comes from this one run on this machine; the ratios are what to compare. The
naive schedule (TVM's default loop nests) is timed on a few steps and extrapolated to 60.

    python benchmarks/bench_mlp_epoch.py [--steps 60] [--repeats 3] [--rounds 3]
                                         [--naive-steps 2]

PyTorch is timed when it is importable (``pip install torch==2.13.0``); it is never a
dependency of dlsys.
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

from dlsys.testing.machine import cpu_description

BATCH = 1000
MODEL = "mlp"
SYSTEMS = ("tuned", "naive", "numpy", "torch")


def make_data(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels and labels: the step's cost does not depend on the values."""
    rng = np.random.default_rng(seed)
    images = rng.random((steps * BATCH, 784), dtype=np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, steps * BATCH)]
    return images, labels


def time_epochs(run_epoch, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call (compiles, caches)."""
    run_epoch()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dlsys_epoch(images: np.ndarray, labels: np.ndarray, steps: int, lr: float = 0.1):
    """A function running ``steps`` dlsys training steps (executor + one SGD kernel call)."""
    from dlsys import autodiff as ad
    from dlsys.frontend.models import build_model
    from dlsys.nn import functional as F
    from dlsys.optim import SGD

    model = build_model(MODEL, seed=0)
    x, y = ad.Variable("x"), ad.Variable("y")
    loss = F.cross_entropy(model(x), y)
    params = model.parameters()
    executor = ad.Executor([loss, *ad.gradients(loss, params)])
    optimizer = SGD(params, lr)
    feed = {}

    def run_epoch():
        for step in range(steps):
            rows = slice(step * BATCH, (step + 1) * BATCH)
            feed[x] = images[rows]
            feed[y] = labels[rows]
            _, *grads = executor.run(feed)
            optimizer.step(grads)

    return run_epoch


def numpy_epoch(images: np.ndarray, labels: np.ndarray, steps: int, lr: float = 0.1):
    from dlsys.frontend.models import init_params
    from dlsys.testing.numpy_reference import loss_and_grads

    params = init_params(MODEL, 0)
    lr32 = np.float32(lr)

    def run_epoch():
        for step in range(steps):
            rows = slice(step * BATCH, (step + 1) * BATCH)
            _, grads = loss_and_grads(params, images[rows], labels[rows])
            for name, grad in grads.items():
                params[name] -= lr32 * grad

    return run_epoch


def torch_epoch(images: np.ndarray, labels: np.ndarray, steps: int, lr: float = 0.1):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels.argmax(axis=1))

    def run_epoch():
        for step in range(steps):
            rows = slice(step * BATCH, (step + 1) * BATCH)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x_all[rows]), y_all[rows])
            loss.backward()
            optimizer.step()

    return run_epoch, torch.__version__, torch.get_num_threads()


def measure(system: str, steps: int, repeats: int, naive_steps: int) -> tuple[float, str, str]:
    """Seconds per epoch of one system, its display name, and a note on how it was timed."""
    images, labels = make_data(steps)
    if system == "tuned":
        return (time_epochs(dlsys_epoch(images, labels, steps), repeats),
                "dlsys (tuned schedules)", "measured")
    if system == "naive":
        os.environ["DLSYS_SCHEDULE"] = "naive"
        seconds = time_epochs(dlsys_epoch(images, labels, naive_steps), 1)
        return (seconds * steps / naive_steps, "dlsys (DLSYS_SCHEDULE=naive)",
                f"{naive_steps} steps x {steps / naive_steps:g}")
    if system == "numpy":
        return (time_epochs(numpy_epoch(images, labels, steps), repeats), "numpy (OpenBLAS)",
                "measured")
    run_torch, version, threads = torch_epoch(images, labels, steps)
    return (time_epochs(run_torch, repeats), f"PyTorch {version} CPU ({threads} threads)",
            "measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch (60 = MNIST)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per system")
    parser.add_argument("--naive-steps", type=int, default=2,
                        help="steps timed with DLSYS_SCHEDULE=naive, extrapolated")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns of each system's process (the naive schedule runs once)")
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        print(json.dumps(measure(args.system, args.steps, args.repeats, args.naive_steps)))
        return

    # Each system runs in a process of its own: a thread pool left spinning by one (TVM's,
    # OpenMP's) would otherwise steal the cores from the next. The systems take turns for
    # several rounds and each keeps its median, so that a slow spell of a shared machine
    # (seen on this project's VMs: 20-30 % for seconds) weighs on all of them. The naive
    # schedule, 50-80x slower, runs once.
    samples: dict[str, list[tuple[float, str, str]]] = {}
    skipped: set[str] = set()
    for round_index in range(args.rounds):
        for system in SYSTEMS:
            if system in skipped or (system == "naive" and round_index > 0):
                continue
            child = subprocess.run([sys.executable, __file__, "--system", system,
                                    "--steps", str(args.steps), "--repeats", str(args.repeats),
                                    "--naive-steps", str(args.naive_steps)],
                                   capture_output=True, text=True)
            if child.returncode != 0:
                reason = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "?"
                print(f"{system}: skipped ({reason})")
                skipped.add(system)
                continue
            samples.setdefault(system, []).append(
                tuple(json.loads(child.stdout.strip().splitlines()[-1])))
    rows = {system: (statistics.median(s[0] for s in runs), runs[0][1], runs[0][2])
            for system, runs in samples.items()}

    tuned = rows["tuned"][0]
    print(f"\nMLP 784-256-100-10, batch {BATCH}, {args.steps} steps per epoch, median of "
          f"{args.repeats} epochs per process and of {args.rounds} alternating rounds, one "
          f"process per system, on {cpu_description()}")
    print(f"{'system':38s} {'s/epoch':>9s} {'x dlsys tuned':>14s}  note")
    for seconds, name, note in rows.values():
        print(f"{name:38s} {seconds:9.3f} {seconds / tuned:13.2f}x  {note}")
    if "naive" in rows:
        print(f"\nnaive / tuned: {rows['naive'][0] / tuned:.1f}x")
    if "torch" in rows:
        print(f"tuned / PyTorch: {tuned / rows['torch'][0]:.2f}x (below 1.0: dlsys is faster)")
    if "numpy" in rows:
        print(f"tuned / numpy: {tuned / rows['numpy'][0]:.2f}x")


if __name__ == "__main__":
    main()
