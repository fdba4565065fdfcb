"""The per-shape choice of the matmul's tiles, and the tuned schedule that applies it.

Tile sizes come from, in order, the user's tuning log, the table shipped for known CPUs, a
short search timed on this machine (its winner is logged), or ``heuristic_config`` when
``DLSYS_TUNE=0`` or the process has spent its search budget (``dlsys.kernels.tuning``).
A constant B is packed ahead of the calls in the panels of the tiles chosen here
(``prepacked_tiles``), so that decision too is taken in the kernel layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import tvm
from tvm import s_tir

from dlsys.kernels import tuning
from dlsys.kernels.common.compute import prim_func
from dlsys.kernels.matmul import compute
from dlsys.kernels.matmul.config import (
    SEARCH_CANDIDATES,
    MatmulConfig,
    MatmulProblem,
    candidate_configs,
    gemv_lanes,
    heuristic_config,
)
from dlsys.kernels.matmul.schedule import (
    apply_config,
    matmul_problem,
    schedule_gemv,
    schedule_matmul,
    schedule_matmul_prepacked,
)

LOG_KIND = "matmul"
# Below this a product runs in under 0.1 ms (200 GFLOPS): a search of 0.7 s or more would
# take hundreds of thousands of calls to repay a 10 % gain, so the heuristic's tiles serve.
SEARCH_MIN_MACS = 1 << 24


def _problem_prim_func(problem: MatmulProblem, config: MatmulConfig) -> tvm.IRModule:
    shape_a, shape_b = problem.shapes()
    if problem.b_prepacked:
        inputs, outputs = compute.matmul_prepacked(shape_a, problem.trans_a, shape_b,
                                                   problem.trans_b, config.tiles(), (),
                                                   problem.dtype)
    else:
        inputs, outputs = compute.matmul(shape_a, problem.trans_a, shape_b, problem.trans_b,
                                         problem.dtype)
    return tvm.IRModule({"main": prim_func(inputs, outputs, inputs_aligned=False)})


def _cpu_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": tuning.system_cpu()})


def _runner(problem: MatmulProblem, config: MatmulConfig) -> Callable[[], None]:
    """Build the plain matmul with ``config``; returns a call on fixed random operands."""
    sch = s_tir.Schedule(_problem_prim_func(problem, config))
    sch.work_on("main")
    if problem.b_prepacked:
        schedule_matmul_prepacked(sch)
    else:
        apply_config(sch, problem, config)
    func = tvm.tirx.build(sch.mod, target=_cpu_target())["main"]
    device = tvm.cpu(0)
    rng = np.random.default_rng(0)
    shape_a, shape_b = problem.shapes()
    if problem.b_prepacked:
        shape_b = (-(-problem.n // config.nr), problem.k, config.nr)
    args = [tvm.runtime.tensor(rng.standard_normal(shape).astype(problem.dtype), device)
            for shape in (shape_a, shape_b)]
    args.append(tvm.runtime.empty((problem.m, problem.n), problem.dtype, device))
    func(*args)  # warm-up: first touch of the buffers and of the thread pool
    return lambda: func(*args)


def _sample(run: Callable[[], None], min_seconds: float = 2e-3) -> float:
    """Mean seconds per call over at least ``min_seconds``, so timer jitter does not decide."""
    start, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - start < min_seconds:
        run()
        calls += 1
    return (time.perf_counter() - start) / calls


def measure_config(problem: MatmulProblem, config: MatmulConfig, repeat: int = 5) -> float:
    """Build the plain matmul with ``config`` and return its best time in seconds."""
    run = _runner(problem, config)
    return min(_sample(run) for _ in range(repeat))


def tune_matmul(problem: MatmulProblem, limit: int | None = None, rounds: int = 5,
                log: bool = True) -> tuple[MatmulConfig, float]:
    """Time the top ``limit`` candidates; log and return the fastest with its GFLOPS.

    Candidates are timed in alternating rounds, best round kept, so that a burst of load
    from another process on this shared machine hits them all rather than one.
    """
    runners = {}
    for config in candidate_configs(problem, limit or SEARCH_CANDIDATES):
        try:
            runners[config] = _runner(problem, config)
        except (RuntimeError, ValueError):  # ScheduleError and TVM's errors are RuntimeErrors
            continue  # a candidate the schedule cannot realise is simply not a winner
    if not runners:
        return heuristic_config(problem), 0.0
    best_time = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for config, run in runners.items():
            best_time[config] = min(best_time[config], _sample(run))
    best = min(best_time, key=best_time.__getitem__)
    gflops = 2.0 * problem.macs / best_time[best] / 1e9
    if log:
        tuning.record(LOG_KIND, problem.key(),
                      {**asdict(best), "gflops": round(gflops, 2), "tried": len(runners)})
    return best, gflops


def choose_config(problem: MatmulProblem) -> MatmulConfig:
    """Logged tiles if any, else a search (unless ``DLSYS_TUNE=0``, the process has spent
    its search budget, ``tuning.search_budget_s``, or the problem is too small to gain)."""
    record = tuning.lookup(LOG_KIND, problem.key())
    config = MatmulConfig.from_json(record, problem) if record is not None else None
    if config is not None:
        return config
    if problem.macs < SEARCH_MIN_MACS or not tuning.search_allowed():
        return heuristic_config(problem)
    start = time.perf_counter()
    try:
        # A packed B comes with inference sessions, whose search runs once per model and
        # shape: twice the candidates, as the pack_a variants double them.
        return tune_matmul(problem, 2 * SEARCH_CANDIDATES if problem.b_prepacked else None)[0]
    finally:
        tuning.spend_search_time(time.perf_counter() - start)



def schedule_matmul_tuned(sch: s_tir.Schedule,
                          fallback: Callable[[s_tir.Schedule], None] | None = None) -> None:
    """The tuned schedule for a PrimFunc holding a ``matmul`` block and optional epilogues.

    A function the tuned schedule cannot handle (not a plain matmul, or a primitive that
    refuses) gets ``fallback`` instead, which is tried on a copy first so a refusal midway
    never leaves ``sch`` half-transformed.
    """
    try:
        problem = matmul_problem(sch)
        lanes = gemv_lanes(problem)
        if lanes is not None:
            try:
                schedule_gemv(sch.copy(), problem, lanes)
            except (RuntimeError, ValueError):
                lanes = None  # the tiled schedule below still applies
        if lanes is not None:
            schedule_gemv(sch, problem, lanes)
            return
        config = choose_config(problem)
        apply_config(sch.copy(), problem, config)
    except (RuntimeError, ValueError):  # ScheduleError and TVM's errors are RuntimeErrors
        if fallback is not None:
            fallback(sch)
        return
    apply_config(sch, problem, config)



def prepacked_tiles(shape_a: tuple, trans_a: bool, shape_b: tuple, trans_b: bool,
                    dtype: str) -> tuple | None:
    """The tiles ``(mr, nr, nc, pack_a, vec_m)`` of ``compute.matmul_prepacked`` for a
    product whose B is constant, so that B can be packed in panels of ``nr`` once, ahead of
    every call; None where B is better read as stored (the matrix-vector product reads each
    row of B once, so panels would gain nothing)."""
    m, n, k = compute.matmul_sizes(shape_a, trans_a, shape_b, trans_b)
    problem = MatmulProblem(m, n, k, trans_a, trans_b, dtype, b_prepacked=True)
    if gemv_lanes(problem) is not None:
        return None
    return choose_config(problem).tiles()



def schedule_matmul_packed(sch: s_tir.Schedule) -> None:
    """The tuned matmul; ``schedule_matmul`` where it cannot apply."""
    schedule_matmul_tuned(sch, fallback=schedule_matmul)


def decisions(sch: s_tir.Schedule) -> str:
    """What the tuned schedule will decide beyond the shapes: the tiles, which come from a
    tuning log that can change after a kernel was compiled (the disk cache keys by it)."""
    try:
        problem = matmul_problem(sch)
        return "gemv" if gemv_lanes(problem) is not None else repr(choose_config(problem))
    except (RuntimeError, ValueError):  # not a plain matmul: the fallback schedule applies
        return "fallback"
