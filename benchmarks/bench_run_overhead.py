"""Where a run's time goes: the kernels, and everything around them.

For each workload, the median time of a whole call (``Executor.run`` for inference and for a
training graph's forward and backward pass, or a whole ``TrainStep``: that run, the loss
read back and checked and the optimiser's update, which the executor makes in the same
native call) beside the median time of its kernels alone (the one native call of the
executor's plan, with the update for a step), and the overhead per run: the median
difference of the two timed back to back (``paired_overhead``), Python's work on feeds and
outputs and the crossings into native code.
The same is measured with ``DLSYS_NATIVE_RUN=0``, the executor calling its kernels one by one
from Python, so that the table shows what the native run loop saves.

Workloads: the MLP 784-256-100-10 and LeNet-5 (inference at batch 1, training steps at batch
1 and 16 with SGD, fed the same arrays at each step and, for the whole step, new ones, whose
kernels alone are then timed reading the same new arrays: ``step_kernels_reading``) and
the GPT of ``bench_transformer.py`` (vocabulary 96, context 128,
width 128, 4 heads, 4 layers; a training step with AdamW at batch 4). Target (issue 27): a
small model's training ``run()`` spends under 5 us outside its kernels.

    python benchmarks/bench_run_overhead.py [--repeats 2000] [--rounds 3] [--no-gpt]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import time

import numpy as np

from dlsys.testing.machine import call_times, cpu_description

# Runs before measuring: the executor compiles its native call at a plan's third run.
WARM_RUNS = 3
# Batches fed in turn by a step fed new arrays: 64 batches of 16 images, 3.2 MB, are more
# than the L2 cache holds.
NEW_ARRAYS = 64
GPT_SHAPE = dict(vocab=96, context=128, width=128, heads=4, layers=4, batch=4)


def image_model(name: str):
    import dlsys
    from dlsys import nn

    dlsys.manual_seed(0)
    if name == "MLP":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 100), nn.ReLU(),
                             nn.Linear(100, 10)), (784,)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10)), (1, 28, 28)


def inference(name: str, batch: int):
    """(call, kernels) for a model's forward pass held as constants, as a session runs it."""
    from dlsys import autodiff as ad

    model, shape = image_model(name)
    x = ad.Variable("x")
    executor = ad.Executor([model(x)], constants=model.parameters())
    feed = {x: np.random.default_rng(0).standard_normal((batch, *shape)).astype("float32")}
    for _ in range(WARM_RUNS):
        executor.run(feed)
    return (lambda: executor.run(feed, convert_to_numpy_ret_vals=True)), kernels_of(executor)


def training(name: str, batch: int, whole_step: bool = True, new_arrays: bool = False):
    """(call, kernels) for one SGD training step of an image model: the whole ``TrainStep``
    (its executor's run, the loss read back and checked, the update kernel), or with
    ``whole_step=False`` the executor's ``run()`` of the forward and backward pass alone.

    The step is fed the same two arrays each time (a loop filling one input buffer, which
    the executor then reads where it lies), or with ``new_arrays`` new ones each time, as a
    loop slicing its data set gives: the executor then copies or wraps each, and its call
    reads data the kernels' call before it did not (``NEW_ARRAYS`` batches in turn)."""
    from dlsys import autodiff as ad
    from dlsys.nn import functional as F
    from dlsys.optim import SGD

    model, shape = image_model(name)
    x, y = ad.Variable("x"), ad.Variable("y")
    step = SGD(model.parameters(), 0.01).minimize(F.cross_entropy(model(x), y))
    rng = np.random.default_rng(0)
    count = NEW_ARRAYS if new_arrays else 1
    images = rng.standard_normal((count * batch, *shape)).astype("float32")
    labels = rng.integers(0, 10, size=count * batch)
    feeds = [{x: images[i * batch:(i + 1) * batch], y: labels[i * batch:(i + 1) * batch]}
             for i in range(count)]
    turn = itertools.cycle(feeds).__next__
    for _ in range(WARM_RUNS):
        step(turn())
    if not whole_step:
        return (lambda: step.executor.run(turn())), kernels_of(step.executor)
    if new_arrays:
        return (lambda: step(turn())), step_kernels_reading(step, feeds)
    return (lambda: step(turn())), step_kernels(step)


def gpt_training():
    """(call, kernels) for one AdamW step of the GPT."""
    import dlsys
    from dlsys import autodiff as ad
    from dlsys import optim
    from dlsys.nn import functional as F
    from dlsys.nn.gpt import GPT
    from dlsys.ops import reshape_op

    s = GPT_SHAPE
    dlsys.manual_seed(0)
    model = GPT(s["vocab"], s["context"], s["width"], s["heads"], s["layers"])
    ids, positions, targets = ad.Variable("ids"), ad.Variable("positions"), ad.Variable("t")
    logits = model(ids, positions)
    loss = F.cross_entropy(reshape_op(logits, (-1, s["vocab"])), reshape_op(targets, (-1,)))
    step = optim.AdamW(model.parameters(), lr=1e-3).minimize(loss)
    rng = np.random.default_rng(0)
    feed = {ids: rng.integers(0, s["vocab"], size=(s["batch"], s["context"])),
            positions: np.arange(s["context"]),
            targets: rng.integers(0, s["vocab"], size=(s["batch"], s["context"]))}
    for _ in range(WARM_RUNS):
        step(feed)
    return (lambda: step(feed)), step_kernels(step)


def kernels_of(executor):
    """The executor's kernels alone, as one call: its native entry, or its calls in turn."""
    prepared = executor._prepared
    first = prepared.first_per_run_call
    if prepared.native is not None:
        return lambda: prepared.native.run(first)
    calls = prepared.calls[first:]

    def run_calls():
        for func, args in calls:
            func(*args)
    return run_calls


def step_kernels(step):
    """A step's kernels alone: the native call with the update the executor makes in it
    (``Executor.attach_update``), or the executor's kernels and then the update kernel."""
    prepared = step.executor._prepared
    if prepared.native is not None and prepared.update is not None:
        first = prepared.first_per_run_call
        return lambda: prepared.native.run(first, math.inf)
    forward_backward = kernels_of(step.executor)
    optimizer = step.optimizer

    def run_kernels():
        forward_backward()
        optimizer._kernel.func(*optimizer._args)
    return run_kernels


def step_kernels_reading(step, feeds: list):
    """A step's kernels alone (its native call, with the update), each call reading the
    next of ``feeds`` where it lies, as the step fed them reads them: the kernels' first
    reads of new data count as the kernels', not as the run's overhead. The step copies
    a small feed into its own buffer first, which reads it as the kernels would; the
    copy's time is then the step's overhead. Without the native call (the Python loop's
    column), the kernels read the arrays the executor holds, as ``step_kernels``'s do."""
    from dlsys.runtime.memory import in_place_tensor

    prepared = step.executor._prepared
    native = prepared.native
    if native is None or prepared.update is None:
        return step_kernels(step)  # the Python loop's calls: their bound arrays, read again
    numbers = {p: prepared.placeholder_number[p] for p in feeds[0]}
    saved = list(native.args)
    arguments = []
    for feed in feeds:
        for placeholder, number in numbers.items():
            native.rebind(number, in_place_tensor(feed[placeholder]))
        native.run(prepared.first_per_run_call, math.inf)  # fills the first two arguments
        arguments.append(tuple(native.args))
    native.args[:] = saved  # the step's own bindings
    turn, entry = itertools.cycle(arguments).__next__, native.entry
    return lambda: entry(*turn())


def measure(workload, repeats: int, rounds: int) -> tuple[float, float, float]:
    """Medians of the whole call, of its kernels, and of the call's time outside its kernels
    (``paired_overhead``), in alternating rounds."""
    call, kernels = workload()
    whole, alone, outside = [], [], []
    for _ in range(rounds):
        whole.append(statistics.median(call_times(call, repeats)))
        alone.append(statistics.median(call_times(kernels, repeats)))
        outside.append(paired_overhead(call, kernels, repeats))
    return statistics.median(whole), statistics.median(alone), statistics.median(outside)


def paired_overhead(call, kernels, repeats: int) -> float:
    """Microseconds of ``call`` outside ``kernels``: the median difference of the two timed
    back to back, in turn first. Kernels of hundreds of microseconds drift by more than the
    overhead between two separate loops (the difference of their medians moved by 5-30 us
    at batch 16 on a 2-vCPU VM); within a pair they drift alike."""
    clock = time.perf_counter
    differences = []
    for index in range(repeats):
        if index % 2:
            start = clock()
            call()
            middle = clock()
            kernels()
            differences.append((middle - start) - (clock() - middle))
        else:
            start = clock()
            kernels()
            middle = clock()
            call()
            differences.append((clock() - middle) - (middle - start))
    return statistics.median(differences) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000, help="calls timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-gpt", action="store_true", help="skip the GPT's step")
    args = parser.parse_args()
    workloads = [(f"{name} inference, batch 1", lambda n=name: inference(n, 1))
                 for name in ("MLP", "LeNet-5")]
    workloads += [(f"{name} training run(), batch {b}",
                   lambda n=name, b=b: training(n, b, whole_step=False))
                  for name in ("MLP", "LeNet-5") for b in (1, 16)]
    workloads += [(f"{name} SGD step (TrainStep), batch {b}", lambda n=name, b=b: training(n, b))
                  for name in ("MLP", "LeNet-5") for b in (1, 16)]
    workloads += [(f"{name} SGD step, batch {b}, new arrays each step",
                   lambda n=name, b=b: training(n, b, new_arrays=True))
                  for name in ("MLP", "LeNet-5") for b in (1, 16)]
    if not args.no_gpt:
        workloads.append((f"GPT AdamW step, batch {GPT_SHAPE['batch']}", gpt_training))
    print(f"CPU: {cpu_description()}; TVM threads: {os.environ.get('TVM_NUM_THREADS', 'all')}")
    print("| workload | call | kernels | overhead, native run | overhead, Python loop |")
    print("|---|---|---|---|---|")
    for label, workload in workloads:
        repeats = max(20, args.repeats // 100) if label.startswith("GPT") else args.repeats
        os.environ["DLSYS_NATIVE_RUN"] = "1"
        whole, kernels, outside = measure(workload, repeats, args.rounds)
        os.environ["DLSYS_NATIVE_RUN"] = "0"
        looped, _, _ = measure(workload, repeats, args.rounds)
        os.environ.pop("DLSYS_NATIVE_RUN")
        print(f"| {label} | {whole:.1f} us | {kernels:.1f} us | {outside:.1f} us | "
              f"{looped - kernels:.1f} us |", flush=True)


if __name__ == "__main__":
    main()
