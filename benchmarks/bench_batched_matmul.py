"""Batched matrix products of attention: dlsys's ``matmul_op`` kernels against ``torch.matmul``.

Shapes are those of multi-head attention with B*H = 32 heads of D = 32 at T = 128 and 512,
on (B*H, T, D) operands, plus the same product on 4-D (B, H, T, D) operands and a dense
layer over a sequence (a stack times a matrix, which runs the 2-D kernel over all rows):

- ``Q K^T`` (T x D times D x T; in the backward pass ``dO V^T`` is the same product),
- ``P V`` (T x T times T x D; backward ``dP K`` likewise),
- ``P^T dO`` (the gradient of V, A transposed; ``dP^T Q`` for K likewise).

dlsys's kernels are the ones the operator asks for (``MatMulOp.kernel_spec``), called on
TVM tensors; PyTorch's is ``torch.matmul`` writing into a preallocated ``out``, so neither
side allocates in the loop. Both run with ``--threads`` threads (default ``os.cpu_count()``,
``torch.set_num_threads`` and ``TVM_NUM_THREADS``), each in a process of its own (a
spinning TVM thread pool would steal PyTorch's cores), taking turns for ``--rounds`` rounds;
each figure is the median of its rounds, each round's the median of its timed loops.

    python benchmarks/bench_batched_matmul.py [--rounds 5] [--threads N] [--min-time 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np

HEADS, DIM = 32, 32
# (name, shape of A, trans_A, shape of B, trans_B)
CASES = [
    *[case for t in (128, 512) for case in [
        (f"T={t} Q K^T", (HEADS, t, DIM), False, (HEADS, t, DIM), True),
        (f"T={t} P V", (HEADS, t, t), False, (HEADS, t, DIM), False),
        (f"T={t} P^T dO", (HEADS, t, t), True, (HEADS, t, DIM), False),
        (f"T={t} Q K^T 4-D", (8, HEADS // 8, t, DIM), False, (8, HEADS // 8, t, DIM), True),
    ]],
    ("dense x W^T, x (8, 128, 128)", (8, 128, 128), False, (384, 128), True),
]


def flops(shape_a, trans_a, shape_b, trans_b) -> float:
    out = np.matmul(np.empty(shape_a)[..., :1, :1], np.empty(shape_b)[..., :1, :1]).shape[:-2]
    m, k = (shape_a[-1], shape_a[-2]) if trans_a else shape_a[-2:]
    n = shape_b[-2] if trans_b else shape_b[-1]
    return 2.0 * float(np.prod(out, dtype=np.int64)) * m * n * k


def seconds_per_call(call, min_time: float, loops: int) -> float:
    """The median over ``loops`` timed loops of at least ``min_time`` seconds each."""
    call()
    times = []
    for _ in range(loops):
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < min_time:
            call()
            calls += 1
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def dlsys_call(shape_a, trans_a, shape_b, trans_b, rng):
    """The kernel ``matmul_op`` runs for these operands, bound to random TVM tensors."""
    import tvm

    from dlsys.ops import matmul_op
    from dlsys.ops.placeholder import Variable

    node = matmul_op(Variable("a"), Variable("b"), trans_a, trans_b)
    shapes = [shape_a, shape_b]
    out_shape = node.op.infer_shape(node, shapes)
    kernel = node.op.kernel_spec(node, shapes, out_shape).build("llvm", "float32")
    args = [tvm.runtime.tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
    args.append(tvm.runtime.empty(out_shape, "float32"))
    return lambda: kernel.func(*args)


def torch_call(shape_a, trans_a, shape_b, trans_b, rng):
    import torch

    a, b = (torch.from_numpy(rng.standard_normal(s).astype("float32"))
            for s in (shape_a, shape_b))
    a = a.transpose(-1, -2) if trans_a else a
    b = b.transpose(-1, -2) if trans_b else b
    out = torch.matmul(a, b)
    return lambda: torch.matmul(a, b, out=out)


def measure(system: str, args: argparse.Namespace) -> dict:
    """GFLOPS of every case for one system (run in a child process)."""
    if system == "torch":
        import torch

        torch.set_num_threads(args.threads)
    make = dlsys_call if system == "dlsys" else torch_call
    rng = np.random.default_rng(0)
    return {name: flops(*case) / seconds_per_call(make(*case, rng), args.min_time, args.loops)
            / 1e9 for name, *case in CASES}


def lscpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("Model name")), "unknown")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns of each process")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both (default: os.cpu_count())")
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds of each timed loop")
    parser.add_argument("--loops", type=int, default=5, help="timed loops per round")
    parser.add_argument("--system", choices=("dlsys", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = args.threads or os.cpu_count() or 1
    if args.system:
        print(json.dumps(measure(args.system, args)))
        return

    import torch

    from dlsys.testing.machine import cpu_description, measure_in_child

    rounds: dict[str, list[dict]] = {"dlsys": [], "torch": []}
    for _ in range(args.rounds):
        for system in rounds:
            rounds[system].append(measure_in_child(
                __file__, system, args.threads, "--min-time", str(args.min_time),
                "--loops", str(args.loops)))
    med = {system: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
           for system, runs in rounds.items()}
    print(f"CPU (lscpu): {lscpu_model()}; {cpu_description()}")
    print(f"{args.threads} thread(s) each, PyTorch {torch.__version__.split('+')[0]}, float32; "
          f"medians of {args.rounds} alternating rounds, one process per system")
    print("\n| product | A | B | dlsys GFLOPS | PyTorch GFLOPS | dlsys time / PyTorch time |")
    print("|---|---|---|---|---|---|")
    for name, shape_a, trans_a, shape_b, trans_b in CASES:
        ours, theirs = med["dlsys"][name], med["torch"][name]
        print(f"| {name} | {shape_a}{'^T' if trans_a else ''} | "
              f"{shape_b}{'^T' if trans_b else ''} | {ours:.1f} | {theirs:.1f} | "
              f"{theirs / ours:.2f} |")


if __name__ == "__main__":
    main()
