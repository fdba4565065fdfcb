"""Reductions: dlsys's sum kernels against numpy's on the same arrays, with their accuracy.

The cases are the reductions a training step and a user run: sums and means over large
tensors (whole, along rows, along columns), the bias gradients of the 784-256-100-10 MLP at
batch 256 (``ReduceSumTo`` to each layer's width), a convolution's bias gradient and batch
norm's per-channel sums and statistics at batch 256 (the ``channel_norm`` kernels). Each
figure is the median of ``--repeats`` timed loops of at least ``--min-time`` seconds; the
error is the relative distance of the kernel's result from a float64 sum of the same float32
values (the largest over the output's elements, against the largest magnitude).

    python benchmarks/bench_reduce.py [--repeats 7] [--min-time 0.1] [--threads N]

numpy sums in one thread with pairwise summation; dlsys uses ``--threads`` (default: one per
physical core), so the ratio says what a user of either sees on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import numpy as np

BATCH = 256
EPS, MOMENTUM = 1e-5, 0.1
# (label, kernel kind, parameters after the input shape, input shapes, numpy reference).
# The first input's shape leads the parameters of every kind here.
CASES = [
    ("sum of 2^24 values", "reduce_sum", ((None,), 1.0), [(1 << 24,)],
     lambda x: x.sum(dtype=np.float64).reshape(1)),
    ("mean of 4096 x 4096", "reduce_sum", ((None,), 1.0 / (1 << 24)), [(4096, 4096)],
     lambda x: x.mean(dtype=np.float64).reshape(1)),
    ("sum of (65536, 256) over rows", "reduce_sum", ((1,), 1.0), [(65536, 256)],
     lambda x: x.sum(axis=0, dtype=np.float64)),
    ("sum of (4096, 4096) along rows", "reduce_sum", ((0,), 1.0), [(4096, 4096)],
     lambda x: x.sum(axis=1, dtype=np.float64)),
    ("MLP bias grad 256 x 256", "reduce_sum_to", ((256,),), [(BATCH, 256)],
     lambda g: g.sum(axis=0, dtype=np.float64)),
    ("MLP bias grad 256 x 100", "reduce_sum_to", ((100,),), [(BATCH, 100)],
     lambda g: g.sum(axis=0, dtype=np.float64)),
    ("MLP bias grad 256 x 10", "reduce_sum_to", ((10,),), [(BATCH, 10)],
     lambda g: g.sum(axis=0, dtype=np.float64)),
    ("conv bias grad (256, 64, 14, 14)", "reduce_sum_to", ((64, 1, 1),), [(BATCH, 64, 14, 14)],
     lambda g: g.sum(axis=(0, 2, 3), dtype=np.float64).reshape(-1, 1, 1)),
    ("BN channel sum (256, 32, 28, 28)", "channel_sum", ((32, 1, 1),), [(BATCH, 32, 28, 28)],
     lambda g: g.sum(axis=(0, 2, 3), dtype=np.float64).reshape(-1, 1, 1)),
    ("BN shift grad (256, 32, 28, 28)", "batchnorm_parameter_gradient", ("shift", EPS),
     [(BATCH, 32, 28, 28)], lambda g: g.sum(axis=(0, 2, 3), dtype=np.float64)),
    ("BN running var (256, 32, 28, 28)", "running_statistic", ("var", MOMENTUM),
     [(32,), (BATCH, 32, 28, 28)],
     lambda r, x: (1 - MOMENTUM) * r + MOMENTUM * x.astype(np.float64).var(axis=(0, 2, 3),
                                                                           ddof=1)),
]


def median_seconds(fn, repeats: int, min_time: float) -> float:
    """Median over ``repeats`` loops of the mean time of one call in a loop of at least
    ``min_time`` seconds (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        calls += 1
    calls = max(calls, 1)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def microseconds(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}" if seconds < 1e-4 else f"{seconds * 1e6:.0f}"


def numpy_call(label: str, kind: str, inputs: list[np.ndarray]):
    """numpy's float32 computation of the same result (what a numpy user would write)."""
    if kind == "running_statistic":
        r, x = inputs
        return lambda: (1 - MOMENTUM) * r + MOMENTUM * x.var(axis=(0, 2, 3), ddof=1)
    x = inputs[0]
    if kind == "reduce_sum":
        axis = None if x.ndim == 1 or "mean" in label else (0 if "over rows" in label else 1)
        return (lambda: x.mean()) if "mean" in label else (lambda: x.sum(axis=axis))
    axes = (0, 2, 3) if x.ndim == 4 else 0
    return lambda: x.sum(axis=axes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0,
                        help="TVM threads (default: dlsys's, one per physical core)")
    args = parser.parse_args()
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import tvm

    from dlsys.kernels import thread_count
    from dlsys.kernels.registry import KernelSpec
    from dlsys.testing.machine import cpu_description

    threads = args.threads or thread_count(None)
    print(f"CPU: {cpu_description()}; dlsys {threads} thread(s), numpy 1; float32; median of "
          f"{args.repeats} loops of >= {args.min_time} s")
    print("| reduction | dlsys us | GB/s | numpy us | dlsys / numpy | dlsys rel. error | "
          "numpy rel. error |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for label, kind, params, shapes, reference in CASES:
        kernel = KernelSpec(kind, (shapes[-1], *params)).build("llvm", "float32")
        inputs = [rng.uniform(0, 1, s).astype(np.float32) for s in shapes]
        tensors = [tvm.runtime.tensor(a) for a in inputs]
        out = tvm.runtime.tensor(np.zeros(kernel.arg_shapes[-1], np.float32))
        ours = median_seconds(partial(kernel.func, *tensors, out), args.repeats, args.min_time)
        call = numpy_call(label, kind, inputs)
        theirs = median_seconds(call, args.repeats, args.min_time)
        exact = np.asarray(reference(*inputs), np.float64).reshape(out.shape)
        scale = np.abs(exact).max()
        error = np.abs(out.numpy() - exact).max() / scale
        numpy_error = np.abs(np.asarray(call(), np.float64).reshape(out.shape) - exact).max() \
            / scale
        gigabytes = sum(a.nbytes for a in inputs) / 1e9
        print(f"| {label} | {microseconds(ours)} | {gigabytes / ours:.1f} | "
              f"{microseconds(theirs)} | "
              f"{ours / theirs:.2f} | {error:.1e} | {numpy_error:.1e} |")


if __name__ == "__main__":
    main()
