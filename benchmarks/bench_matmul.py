"""GFLOPS of dlsys's matmul kernels (tuned and naive schedules) against numpy, in one run.

The shapes are those of the MLP 784-256-100-10 at batch 1000 (forward, the input gradients
with B transposed, the weight gradients with A transposed), plus 1024^3. numpy is timed
first, before TVM's thread pool exists (its idle workers spin and would steal OpenBLAS's
cores); then dlsys's kernels, tuned and naive in alternating rounds. Every contestant is
warmed up and the best round counts. The naive schedule is timed only on small shapes: it
runs at well under 1 GFLOPS.

    python benchmarks/bench_matmul.py               # all shapes
    python benchmarks/bench_matmul.py --fresh       # empty caches: first-use build time
    python benchmarks/bench_matmul.py --ignore-shipped   # ...and first-use tile search time
    python benchmarks/bench_matmul.py --write-table dlsys/kernels/tuned/matmul_znver3.json
                                                    # a longer search, saved as the shipped table
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tvm

# (name, shape of A, trans_a, shape of B, trans_b)
SHAPES = [
    ("fwd X@W1", (1000, 784), False, (784, 256), False),
    ("fwd H1@W2", (1000, 256), False, (256, 100), False),
    ("fwd H2@W3", (1000, 100), False, (100, 10), False),
    ("bwd dH2@W2^T", (1000, 100), False, (256, 100), True),
    ("bwd dY@W3^T", (1000, 10), False, (100, 10), True),
    ("grad X^T@dH1", (1000, 784), True, (1000, 256), False),
    ("grad H1^T@dH2", (1000, 256), True, (1000, 100), False),
    ("grad H2^T@dY", (1000, 100), True, (1000, 10), False),
    ("square 1024^3", (1024, 1024), False, (1024, 1024), False),
]


def best_seconds(fn: Callable[[], object], rounds: int, min_time: float, pause: float) -> float:
    """Best mean time of ``fn`` over ``rounds`` rounds of at least ``min_time`` seconds each."""
    best = float("inf")
    for _ in range(rounds):
        time.sleep(pause)
        fn()
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < min_time:
            fn()
            calls += 1
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def build_dlsys(shape_a, trans_a, shape_b, trans_b, mode: str):
    """A dlsys kernel under schedule ``mode`` and the seconds its build (and search) took."""
    from dlsys import tvm_op

    previous = os.environ.get("DLSYS_SCHEDULE")
    os.environ["DLSYS_SCHEDULE"] = mode
    try:
        start = time.perf_counter()
        kernel = tvm_op.make_matrix_mul(shape_a, trans_a, shape_b, trans_b, "llvm", "llvm",
                                        f"matmul_{mode}")
        return kernel, time.perf_counter() - start
    finally:
        if previous is None:
            os.environ.pop("DLSYS_SCHEDULE", None)
        else:
            os.environ["DLSYS_SCHEDULE"] = previous


class Case:
    """One shape's operands, as numpy arrays and as TVM tensors."""

    def __init__(self, name: str, shape_a, trans_a: bool, shape_b, trans_b: bool,
                 rng: np.random.Generator):
        self.name, self.shape_a, self.trans_a = name, shape_a, trans_a
        self.shape_b, self.trans_b = shape_b, trans_b
        a = rng.standard_normal(shape_a).astype("float32")
        b = rng.standard_normal(shape_b).astype("float32")
        self.op_a, self.op_b = (a.T if trans_a else a), (b.T if trans_b else b)
        self.m, self.k = self.op_a.shape
        self.n = self.op_b.shape[1]
        self.flops = 2.0 * self.m * self.n * self.k
        self.tensors = [tvm.runtime.tensor(a), tvm.runtime.tensor(b),
                        tvm.runtime.empty((self.m, self.n), "float32")]

    def numpy_product(self) -> np.ndarray:
        return self.op_a @ self.op_b


def time_dlsys(case: Case, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """GFLOPS of the tuned (and, on small shapes, naive) kernels, and the tuned build time."""
    tuned, build_s = build_dlsys(case.shape_a, case.trans_a, case.shape_b, case.trans_b, "tuned")
    contestants = {"tuned": lambda: tuned.func(*case.tensors)}
    if case.m * case.n * case.k <= args.naive_max_macs:
        naive, _ = build_dlsys(case.shape_a, case.trans_a, case.shape_b, case.trans_b, "naive")
        contestants["naive"] = lambda: naive.func(*case.tensors)

    tuned.func(*case.tensors)
    expected = case.numpy_product()
    error = np.abs(case.tensors[2].numpy() - expected).max()
    if error > 1e-3 * max(1.0, np.abs(expected).max()):
        raise SystemExit(f"{case.name}: tuned kernel differs from numpy by {error}")

    best = dict.fromkeys(contestants, float("inf"))
    for _ in range(args.rounds):
        for who, fn in contestants.items():
            best[who] = min(best[who], best_seconds(fn, 1, args.min_time, args.pause))
    return {who: case.flops / seconds / 1e9 for who, seconds in best.items()}, build_s


def write_table(path: str, limit: int, rounds: int) -> None:
    """Search every shape harder than first use does and save the winners as a shipped table."""
    from dlsys.kernels import tuning
    from dlsys.kernels.matmul import search as matmul

    entries = {}
    for name, shape_a, trans_a, shape_b, trans_b in SHAPES:
        m, k = (shape_a[1], shape_a[0]) if trans_a else shape_a
        n = shape_b[0] if trans_b else shape_b[1]
        problem = matmul.MatmulProblem(m, n, k, trans_a, trans_b, "float32")
        start = time.perf_counter()
        config, gflops = matmul.tune_matmul(problem, limit=limit, rounds=rounds, log=False)
        print(f"{name:<15} {config}  {gflops:.1f} GFLOPS  searched in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        entries[problem.key()] = {**config.__dict__, "gflops": round(gflops, 1)}
    with open(path, "w") as handle:
        json.dump({"version": tuning.LOG_VERSION, "entries": entries}, handle, indent=1,
                  sort_keys=True)
        handle.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contestant")
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds each round runs at least")
    parser.add_argument("--pause", type=float, default=0.15,
                        help="seconds of idle before each round, for spinning threads to sleep")
    parser.add_argument("--naive-max-macs", type=float, default=2e6,
                        help="time the naive schedule only up to this many multiply-adds")
    parser.add_argument("--fresh", action="store_true",
                        help="use empty kernel and tuning caches, to show first-use cost")
    parser.add_argument("--ignore-shipped", action="store_true",
                        help="like --fresh, and without the shipped table or a search "
                             "budget: every shape large enough is searched at first use, as "
                             "on an unknown CPU over its first few runs")
    parser.add_argument("--only", default="", help="substring of the shape names to run")
    parser.add_argument("--write-table", metavar="PATH",
                        help="instead of benchmarking, search each shape and write a table")
    args = parser.parse_args()
    if args.write_table:
        write_table(args.write_table, limit=8, rounds=9)
        return
    if args.fresh or args.ignore_shipped:
        os.environ["DLSYS_CACHE_DIR"] = os.path.join(tempfile.mkdtemp(prefix="dlsys-bench-"),
                                                     "kernels")
    if args.ignore_shipped:
        from pathlib import Path

        from dlsys.kernels import tuning

        tuning.SHIPPED_DIR = Path(tempfile.mkdtemp(prefix="dlsys-no-table-"))
        os.environ["DLSYS_TUNE_BUDGET"] = "inf"

    rng = np.random.default_rng(0)
    cases = [Case(*shape, rng) for shape in SHAPES if args.only in shape[0]]
    # numpy first, before any TVM kernel has started TVM's thread pool: its idle workers
    # spin, and next to OpenBLAS's own on two cores they cut numpy to a fraction of its speed.
    numpy_gflops = [case.flops / best_seconds(case.numpy_product, args.rounds, args.min_time,
                                              args.pause) / 1e9 for case in cases]
    print(f"{'shape':<15}{'M x N x K':>17}  {'build s':>8}  {'tuned':>7}  {'naive':>7}  "
          f"{'numpy':>7}  {'tuned/numpy':>11}")
    ratios = []
    for case, numpy_rate in zip(cases, numpy_gflops):
        gflops, build_s = time_dlsys(case, args)
        ratios.append(gflops["tuned"] / numpy_rate)
        naive_text = f"{gflops['naive']:7.2f}" if "naive" in gflops else f"{'-':>7}"
        print(f"{case.name:<15}{f'{case.m}x{case.n}x{case.k}':>17}  {build_s:8.2f}  "
              f"{gflops['tuned']:7.1f}  {naive_text}  {numpy_rate:7.1f}  {ratios[-1]:11.2f}",
              flush=True)
    if ratios:
        geomean = float(np.exp(np.mean(np.log(ratios))))
        print(f"geometric mean tuned/numpy: {geomean:.2f}  (GFLOPS; build s includes any "
              f"first-use tile search)")


if __name__ == "__main__":
    main()
