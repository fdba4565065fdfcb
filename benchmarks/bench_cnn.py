"""Convolutional networks: dlsys's conv kernels and training epochs against PyTorch's.

Both parts run at batch 256 on 28 x 28 single-channel images.

1. GFLOPS of each convolution of LeNet-5 and of the ``cnn`` model (``dlsys.frontend.models``)
   in its three passes: forward, gradient w.r.t. the input, gradient w.r.t. the weight, each
   2 * N * O * OH * OW * C * KH * KW flops. dlsys's kernels come from ``dlsys.tvm_op``, called
   on TVM tensors; PyTorch's are ``F.conv2d`` and ``torch.nn.grad.conv2d_input``/``_weight``.
   Each figure is the best of three loops of at least ``--min-time`` seconds.
2. The training epoch of both models on 50,000 Fashion-MNIST images (dlsys's loader and batch
   order for both): dlsys's ``Trainer``, compiled before timing, against the same layers,
   initial weights and batches in PyTorch, both SGD momentum 0.9 and both reading back the
   loss and the correct predictions each step. ``--batches N`` times the first N batches
   and extrapolates to the epoch.

dlsys and PyTorch run in processes of their own with the same thread count (a spinning TVM
thread pool would steal PyTorch's cores), taking turns for ``--rounds`` rounds; each figure
is the median of its rounds, so that a busy spell of a shared machine weighs on both.

    python benchmarks/bench_cnn.py [--rounds 3] [--batches N] [--threads N] [--min-time 0.2]

PyTorch is timed when it is importable (``pip install torch==2.13.0``); it is never a
dependency of dlsys. Without it the dlsys figures are printed alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

BATCH = 256
MODELS = ("lenet", "cnn")
LR = 0.02  # dlsys's default for SGD with momentum
# Every convolution of dlsys.frontend.models' _lenet() and _cnn() at 28 x 28 input:
# (layer, input shape NCHW, filter shape OIHW, padding). Pooling halves the size between them.
CONVS = [
    ("lenet conv1", (BATCH, 1, 28, 28), (6, 1, 5, 5), 2),
    ("lenet conv2", (BATCH, 6, 14, 14), (16, 6, 5, 5), 0),
    ("cnn conv1", (BATCH, 1, 28, 28), (32, 1, 3, 3), 1),
    ("cnn conv2", (BATCH, 32, 14, 14), (64, 32, 3, 3), 1),
]
PASSES = ("forward", "grad input", "grad weight")


def conv_shapes(shape_x, shape_f, pad: int) -> tuple[tuple[int, ...], float]:
    """The output shape and the flops of one pass (all three do the same multiply-adds)."""
    n, c, h, w = shape_x
    o, _, kh, kw = shape_f
    shape_y = (n, o, h + 2 * pad - kh + 1, w + 2 * pad - kw + 1)
    return shape_y, 2.0 * n * o * shape_y[2] * shape_y[3] * c * kh * kw


def best_seconds(fn, min_time: float, loops: int = 3) -> float:
    """Best mean time of ``fn`` over ``loops`` loops of at least ``min_time`` seconds each."""
    fn()
    best = float("inf")
    for _ in range(loops):
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < min_time:
            fn()
            calls += 1
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def conv_calls(system: str, shape_x, shape_f, pad: int) -> list:
    """The three passes of one convolution as argument-less calls, on random operands."""
    shape_y, _ = conv_shapes(shape_x, shape_f, pad)
    rng = np.random.default_rng(0)
    x, f, g = (rng.standard_normal(s, dtype=np.float32) for s in (shape_x, shape_f, shape_y))
    if system == "torch":
        import torch

        x, f, g = (torch.from_numpy(a) for a in (x, f, g))
        return [lambda: torch.nn.functional.conv2d(x, f, padding=pad),
                lambda: torch.nn.grad.conv2d_input(shape_x, f, g, padding=pad),
                lambda: torch.nn.grad.conv2d_weight(x, shape_f, g, padding=pad)]
    import tvm

    from dlsys import tvm_op

    tx, tf, tg = (tvm.runtime.tensor(a) for a in (x, f, g))
    y, dx, df = (tvm.runtime.empty(s, "float32") for s in (shape_y, shape_x, shape_f))
    kernels = [make(shape_x, shape_f, "llvm", "llvm", make.__name__, padding=pad).func
               for make in (tvm_op.make_conv2d, tvm_op.make_conv2d_grad_input,
                            tvm_op.make_conv2d_grad_weight)]
    return [lambda: kernels[0](tx, tf, y), lambda: kernels[1](tg, tf, dx),
            lambda: kernels[2](tx, tg, df)]


def epoch_seconds(system: str, name: str, split, batches: list) -> tuple[float, float]:
    """Seconds to train on ``batches`` (compilation excluded) and their mean loss."""
    from dlsys.frontend.models import init_params
    from dlsys.frontend.trainer import Trainer
    from dlsys.testing.torch_reference import torch_model

    if system == "dlsys":
        trainer = Trainer.for_model(name, 0, LR, BATCH, optimizer="momentum")
        trainer.compile()
        start = time.perf_counter()
        losses = trainer.train_epoch(1, split, batches, progress=False)
        return time.perf_counter() - start, float(np.mean(losses))
    import torch

    model = torch_model(name, init_params(name, 0))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    images = split.images.reshape(-1, 1, 28, 28)
    # One step's forward and backward first, as dlsys's compile() runs its step once: PyTorch
    # sets up its kernels at first use. No optimiser step, so the weights stay as they were.
    model(torch.zeros(BATCH, 1, 28, 28)).sum().backward()
    losses, correct = [], 0
    start = time.perf_counter()
    for idx in batches:
        x, y = torch.from_numpy(images[idx]), torch.from_numpy(split.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        correct += int((logits.argmax(1) == y).sum())
    return time.perf_counter() - start, float(np.mean(losses))


def measure(system: str, args: argparse.Namespace) -> dict:
    """Every figure of one system, in this process: GFLOPS per pass, seconds per epoch."""
    from dlsys.data.batches import epoch_batches
    from dlsys.data.mnist import load_dataset

    if system == "torch":
        import torch

        torch.set_num_threads(args.threads)
    results = {}
    for layer, shape_x, shape_f, pad in CONVS:
        _, flops = conv_shapes(shape_x, shape_f, pad)
        for pass_name, fn in zip(PASSES, conv_calls(system, shape_x, shape_f, pad)):
            results[f"{layer}|{pass_name}"] = flops / best_seconds(fn, args.min_time) / 1e9
    split = load_dataset().train
    batches = epoch_batches(np.random.default_rng(0), len(split), BATCH)
    timed = batches[:args.batches or len(batches)]
    for name in MODELS:
        seconds, loss = epoch_seconds(system, name, split, timed)
        results[f"epoch|{name}"] = (seconds * len(batches) / len(timed), loss)
    results["batches"] = (len(timed), len(batches), len(split))
    return results


def median_of(values: list):
    """The median of numbers, or the element-wise median of tuples of them."""
    if isinstance(values[0], list):
        return tuple(statistics.median(column) for column in zip(*values))
    return statistics.median(values)


def child(system: str, args: argparse.Namespace) -> dict:
    from dlsys.testing.machine import measure_in_child

    return measure_in_child(__file__, system, args.threads, "--batches", str(args.batches),
                            "--min-time", str(args.min_time))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns of each process")
    parser.add_argument("--batches", type=int, default=0,
                        help="time the first N batches of the epoch, extrapolated (0: all)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both (default: dlsys's, one per physical core)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds of each timed loop of a conv kernel")
    parser.add_argument("--system", choices=("dlsys", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        print(json.dumps(measure(args.system, args)))
        return

    from dlsys.kernels import thread_count
    from dlsys.testing.machine import cpu_description

    args.threads = args.threads or thread_count(None)
    try:
        import torch
        version, systems = torch.__version__.split("+")[0], ["dlsys", "torch"]
    except ImportError:
        version, systems = None, ["dlsys"]
    rounds: dict[str, list[dict]] = {system: [] for system in systems}
    for _ in range(args.rounds):
        for system in systems:
            rounds[system].append(child(system, args))
    med = {system: {key: median_of([r[key] for r in runs]) for key in runs[0]}
           for system, runs in rounds.items()}
    timed, total, images = rounds["dlsys"][0]["batches"]
    print(f"CPU: {cpu_description()}; {args.threads} thread(s) each; batch {BATCH}; "
          f"median of {args.rounds} round(s), one process per system; "
          + (f"PyTorch {version}" if version else
             "PyTorch is not installed (pip install torch==2.13.0): dlsys figures only"))
    print("\nConvolutions, GFLOPS (ratio: dlsys time / PyTorch time, below 1 dlsys is faster)")
    print("| layer | X | F, pad | pass | dlsys | PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|")
    for layer, shape_x, shape_f, pad in CONVS:
        for pass_name in PASSES:
            key = f"{layer}|{pass_name}"
            ours = med["dlsys"][key]
            theirs = f"{med['torch'][key]:.1f} | {med['torch'][key] / ours:.2f}" \
                if "torch" in med else "- | -"
            note = " (not needed in training)" \
                if pass_name == "grad input" and shape_x[1] == 1 else ""
            print(f"| {layer} | {shape_x} | {shape_f}, {pad} | {pass_name}{note} | "
                  f"{ours:.1f} | {theirs} |")
    how = "a full epoch" if timed == total else \
        f"the first {timed} of {total} batches, extrapolated to the epoch"
    print(f"\nTraining epoch: {images} Fashion-MNIST images in {total} batches (the partial "
          f"one dropped), SGD momentum 0.9, lr {LR}; {how}; seconds per epoch (mean loss of "
          f"the timed batches)")
    print("| model | dlsys s | PyTorch s | dlsys / PyTorch |")
    print("|---|---|---|---|")
    for name in MODELS:
        ours, our_loss = med["dlsys"][f"epoch|{name}"]
        theirs = "- | -"
        if "torch" in med:
            seconds, loss = med["torch"][f"epoch|{name}"]
            theirs = f"{seconds:.2f} ({loss:.3f}) | {ours / seconds:.2f}"
        print(f"| {name} | {ours:.2f} ({our_loss:.3f}) | {theirs} |")


if __name__ == "__main__":
    main()
