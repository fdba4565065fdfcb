"""Fused attention (``dlsys.ops.attention_op``: online softmax, no T x S buffer, the backward
pass recomputing the probabilities) against dlsys's unfused graph (batched matmuls, causal
mask, softmax) and PyTorch 2.13's ``scaled_dot_product_attention``, forward alone and forward
with backward, float32, on (B, H, T, D) = (8, 4, T, 32), T = S.

The three take turns sample by sample in one process (``torch.set_num_threads`` and TVM's
pool both at ``--threads``), so that a busy spell of a shared machine weighs on each alike.
Each figure is the median of ``--repeats`` samples, with the fastest and slowest sample.
The lengths (``--lengths``) also show where the fused operator stops or starts winning: the
rule ``dlsys.ops.attention.use_fused_attention`` quotes these figures.

    python benchmarks/bench_attention.py [--lengths 128 512] [--repeats 7] [--no-causal]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

BATCH, HEADS, DEPTH = 8, 4, 32


def dlsys_call(t: int, causal: bool, strategy: str, backward: bool):
    """One run of dlsys's attention (``strategy``: "fused" or "unfused"), with the three
    input gradients when ``backward``."""
    from dlsys import autodiff as ad
    from dlsys.nn import functional as F
    from dlsys.ops import sum_op

    os.environ["DLSYS_ATTENTION"] = strategy
    try:
        q, k, v, g = (ad.Variable(n) for n in "qkvg")
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        grads = ad.gradients(sum_op(out * g), [q, k, v]) if backward else []
    finally:
        del os.environ["DLSYS_ATTENTION"]
    executor = ad.Executor([out, *grads])
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((BATCH, HEADS, t, DEPTH)).astype(np.float32)
             for n in (q, k, v, g) if backward or n is not g}
    return lambda: executor.run(feeds)


def torch_call(t: int, causal: bool, backward: bool):
    import torch
    rng = np.random.default_rng(1)
    q, k, v, g = (torch.from_numpy(rng.standard_normal((BATCH, HEADS, t, DEPTH))
                                   .astype(np.float32)) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(backward)

    def call():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if backward:
            torch.autograd.grad(out, (q, k, v), g)

    return call


def time_alternating(calls: dict, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Milliseconds per call of each, ``(median, fastest, slowest)``, their samples taking
    turns after one warm-up call each (which also compiles dlsys's kernels)."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(s), min(s), max(s)) for name, s in samples.items()}


def gflops(t: int, causal: bool, backward: bool, ms: float) -> float:
    """The products' useful work (QK^T and PV, and the backward's four; the masked half
    not counted when causal) per second."""
    products = 6 if backward else 2
    work = 2 * BATCH * HEADS * t * t * DEPTH * products * (0.5 if causal else 1.0)
    return work / ms / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-causal", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    import torch

    from dlsys.testing.machine import cpu_description
    torch.set_num_threads(args.threads)
    causal = not args.no_causal
    print(f"{cpu_description()}; {args.threads} threads; torch {torch.__version__}")
    print(f"B={BATCH} H={HEADS} D={DEPTH} T=S, causal={causal}, float32; ms per call: "
          f"median [fastest, slowest] of {args.repeats}")
    for backward in (False, True):
        print(f"\n{'forward + backward' if backward else 'forward'}:")
        print(f"{'T':>5} {'fused':>24} {'unfused':>24} {'torch':>24}  unfused/fused "
              f"torch/fused  fused GFLOPS")
        for t in args.lengths:
            calls = {"fused": dlsys_call(t, causal, "fused", backward),
                     "unfused": dlsys_call(t, causal, "unfused", backward),
                     "torch": torch_call(t, causal, backward)}
            times = time_alternating(calls, args.repeats)
            cells = [f"{m:8.2f} [{lo:6.2f}, {hi:6.2f}]" for m, lo, hi in times.values()]
            fused = times["fused"][0]
            print(f"{t:>5} {' '.join(f'{c:>24}' for c in cells)}  "
                  f"{times['unfused'][0] / fused:13.2f} {times['torch'][0] / fused:11.2f}  "
                  f"{gflops(t, causal, backward, fused):12.1f}")


if __name__ == "__main__":
    main()
