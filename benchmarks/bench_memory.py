"""Training under a memory budget: planned bytes against step time as the budget falls from
the plain plan to the smallest that recomputation reaches (``passes.recompute``).

- **Deep MLP** (``--layers`` linear + ReLU layers of ``--width`` at ``--batch`` rows, SGD
  with momentum): activations outweigh the weights there, so the budget bites. For each
  budget: the working memory the plan takes, the part of it beyond the step's outputs (the
  gradients and the loss, which every plan holds to the end: the *activation memory*), the
  values kept and recomputed, the extra work, the step's time and its ratio to the plain
  step. Targets (issue 28): half the plain plan's activation memory at most 1.25x the
  plain step time; the smallest reachable plan (about sqrt(n) segments) at most 1.4x.
- **Largest batch** of that MLP whose step fits ``--fixed-budget`` with and without
  recomputation (planning only, no kernels built).
- **GPT** (``dlsys train --model gpt``'s model at batch 16, AdamW): the plain plan, half of
  its working memory and the smallest reachable.

Every figure of a table comes from one process; the budgets take turns for ``--rounds``
rounds and each time is the median of its rounds.

    python benchmarks/bench_memory.py [--rounds 5] [--layers 48] [--width 256] [--batch 2048]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np

from dlsys import autodiff as ad
from dlsys import nn, optim
from dlsys.errors import MemoryBudgetError
from dlsys.nn import functional as F
from dlsys.passes import pipeline
from dlsys.passes.gradient import gradients
from dlsys.testing.machine import cpu_description

MIB = 1 << 20


def deep_mlp(layers: int, width: int) -> nn.Module:
    rng = np.random.default_rng(0)
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*modules, nn.Linear(width, 10))
    # Small weights keep the activations finite through many layers.
    model.load_state_dict({k: rng.normal(scale=1 / math.sqrt(width), size=v.shape)
                           .astype(np.float32) for k, v in model.state_dict().items()})
    return model


class Workload:
    """A training step's graph, its feeds, and an optimiser factory, for any budget."""

    def __init__(self, loss, params, feeds: dict, make_optimizer):
        self.loss, self.params, self.feeds = loss, params, feeds
        self.make_optimizer = make_optimizer
        self.outputs = [loss, *gradients(loss, params)]
        self.output_bytes = 4 * (1 + sum(math.prod(p.shape) for p in params))

    def step(self, budget: int | None) -> optim.TrainStep:
        return self.make_optimizer(self.params).minimize(self.loss, memory_budget=budget)

    def smallest_budget(self) -> int:
        try:
            self.step(1)(self.feeds)
        except MemoryBudgetError as e:
            return e.smallest_bytes
        raise RuntimeError("a budget of one byte was met")


def mlp_workload(layers: int, width: int, batch: int) -> Workload:
    model = deep_mlp(layers, width)
    x, y = ad.Variable("x"), ad.Variable("y")
    loss = F.cross_entropy(model(x), y)
    rng = np.random.default_rng(1)
    feeds = {x: rng.normal(size=(batch, width)).astype(np.float32),
             y: rng.integers(0, 10, size=batch)}
    return Workload(loss, model.parameters(), feeds,
                    lambda params: optim.SGD(params, lr=1e-4, momentum=0.9))


def gpt_workload(batch: int = 16) -> Workload:
    from dlsys.nn.gpt import GPT
    from dlsys.ops.reshape import reshape_op

    vocab, context = 96, 128
    model = GPT(vocab, context=context, width=128, heads=4, layers=4)
    ids, positions, targets = ad.Variable("ids"), ad.Variable("positions"), ad.Variable("t")
    logits = model(ids, positions)
    loss = F.cross_entropy(reshape_op(logits, (-1, vocab)), reshape_op(targets, (-1,)))
    rng = np.random.default_rng(1)
    feeds = {ids: rng.integers(0, vocab, (batch, context)),
             positions: np.tile(np.arange(context), (batch, 1)),
             targets: rng.integers(0, vocab, (batch, context))}
    return Workload(loss, model.parameters(), feeds,
                    lambda params: optim.AdamW(params, lr=1e-5))


def measure(work: Workload, budgets: list[int | None], rounds: int, calls: int) -> list[dict]:
    """One row per distinct plan among ``budgets``: its memory, its recomputation and the
    median step time over ``rounds`` rounds in which the steps take turns."""
    rows, seen = [], set()
    for budget in budgets:
        step = work.step(budget)
        step(work.feeds)  # compiles and plans
        stats = step.executor.memory_stats()
        recompute = step.executor.program().recompute
        key = (stats["planned_bytes"], recompute.extra_flops if recompute else 0)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"budget": budget, "step": step, "planned": stats["planned_bytes"],
                     "held": stats["held_bytes"], "recompute": recompute, "times": []})
    for _ in range(rounds):
        for row in rows:
            start = time.perf_counter()
            for _ in range(calls):
                row["step"](work.feeds)
            row["times"].append((time.perf_counter() - start) / calls)
    for row in rows:
        row["seconds"] = statistics.median(row["times"])
    return rows


def print_table(work: Workload, rows: list[dict]) -> None:
    plain = rows[0]
    plain_activations = plain["planned"] - work.output_bytes
    print(f"{'budget MiB':>10} {'planned':>8} {'activ.':>7} {'act/plain':>9} {'kept':>5} "
          f"{'recomp':>6} {'extra GFLOP':>11} {'step ms':>8} {'x plain':>7}")
    for row in rows:
        activations = row["planned"] - work.output_bytes
        recompute = row["recompute"]
        extra = recompute.extra_flops if recompute else 0
        share = f" ({extra / recompute.flops:.0%})" if recompute else ""
        budget = "none" if row["budget"] is None else f"{row['budget'] / MIB:.1f}"
        print(f"{budget:>10} {row['planned'] / MIB:8.1f} {activations / MIB:7.1f} "
              f"{activations / plain_activations:9.2f} "
              f"{len(recompute.kept) if recompute else '-':>5} "
              f"{len(recompute.recomputed) if recompute else 0:>6} "
              f"{extra / 1e9:6.2f}{share:>5} {row['seconds'] * 1e3:8.1f} "
              f"{row['seconds'] / plain['seconds']:7.2f}")


def targets(work: Workload, rows: list[dict], layers: int) -> None:
    plain = rows[0]
    ratio = {id(r): r["seconds"] / plain["seconds"] for r in rows}
    activation = {id(r): r["planned"] - work.output_bytes for r in rows}
    half = [r for r in rows if activation[id(r)] <= activation[id(plain)] / 2]
    if half:
        best = min(half, key=lambda r: ratio[id(r)])
        print(f"half the plain plan's activation memory: {ratio[id(best)]:.2f}x its step time "
              f"(target at most 1.25x)")
    ordered = [r for r in rows if r["recompute"] is not None and not r["recompute"].recomputed]
    if ordered:
        base = ordered[0]
        under = [r for r in rows if r["recompute"] is not None and r["recompute"].recomputed
                 and activation[id(r)] <= activation[id(base)] / 2]
        if under:
            best = min(under, key=lambda r: ratio[id(r)])
            print(f"half the memory-ordered plan's activation memory (recomputing): "
                  f"{ratio[id(best)]:.2f}x the plain step time")
    smallest = rows[-1]
    kept = len(smallest["recompute"].kept) if smallest["recompute"] else 0
    print(f"smallest reachable: {activation[id(smallest)] / MIB:.1f} MiB of activations "
          f"({activation[id(smallest)] / activation[id(plain)]:.2f} of the plain plan's), "
          f"{kept} values kept for {layers} layers (sqrt(n) = {math.sqrt(layers):.1f}), "
          f"{ratio[id(smallest)]:.2f}x the plain step time (target at most 1.4x)")


def planned_total(layers: int, width: int, batch: int, recompute: bool) -> int:
    """The bytes a step of the MLP at ``batch`` holds: the plain plan's, or the smallest
    budget recomputation reaches (planning only)."""
    work = mlp_workload(layers, width, batch)
    x, y = list(work.feeds)
    shapes = {x: (batch, width), y: (batch,)} | {p: p.shape for p in work.params}
    state = 2 * sum(4 * math.prod(p.shape) for p in work.params)  # momentum and more
    options = pipeline.CompileOptions(memory_budget=1 if recompute else None,
                                      reserved_bytes=state)
    try:
        program = pipeline.compile(work.outputs, shapes, options, {y: "int64"}, build=False)
    except MemoryBudgetError as e:
        return e.smallest_bytes
    return program.plan.planned_bytes + program.fixed_bytes + state


def largest_batch(layers: int, width: int, budget: int, recompute: bool) -> int:
    """The largest multiple of 64 rows whose step fits ``budget`` (bisection)."""
    low, high = 0, 64
    while planned_total(layers, width, high, recompute) <= budget:
        low, high = high, high * 2
    while high - low > 64:
        middle = (low + high) // 128 * 64
        if planned_total(layers, width, middle, recompute) <= budget:
            low = middle
        else:
            high = middle
    return low


def budgets_between(work: Workload, shares: tuple[float, ...]) -> list[int | None]:
    """No budget, then budgets that leave these shares of the plain plan's working memory,
    then the smallest reachable (those below it dropped)."""
    plain_step = work.step(None)
    plain_step(work.feeds)
    planned = plain_step.executor.memory_stats()["planned_bytes"]
    smallest = work.smallest_budget()
    # What a budgeted step holds besides its plan (the optimiser's state is counted then).
    probe = work.step(smallest)
    probe(work.feeds)
    held = probe.executor.memory_stats()["held_bytes"]
    budgets = [held + int(planned * share) for share in shares]
    return [None, *(b for b in budgets if b >= smallest), smallest]


def mlp_section(args) -> None:
    work = mlp_workload(args.layers, args.width, args.batch)
    print(f"deep MLP: {args.layers} x (Linear {args.width} + ReLU), batch {args.batch}, SGD "
          f"with momentum; outputs (loss and gradients) {work.output_bytes / MIB:.1f} MiB")
    budgets = budgets_between(work, (1.0, 0.6, 0.45, 0.35, 0.28, 0.22))
    rows = measure(work, budgets, args.rounds, args.calls)
    print_table(work, rows)
    targets(work, rows, args.layers)
    fixed = args.fixed_budget * MIB
    print(f"largest batch within {args.fixed_budget} MiB: "
          f"{largest_batch(args.layers, args.width, fixed, False)} rows with the plain plan, "
          f"{largest_batch(args.layers, args.width, fixed, True)} recomputing")


def gpt_section(args) -> None:
    work = gpt_workload()
    print("\nGPT (context 128, width 128, 4 heads, 4 layers, batch 16), AdamW:")
    rows = measure(work, budgets_between(work, (0.5,)), args.rounds, 1)
    print_table(work, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2, help="steps timed per round")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--fixed-budget", type=int, default=128, metavar="MIB",
                        help="the budget of the largest-batch search, in MiB")
    parser.add_argument("--gpt", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}; TVM threads {os.environ.get('TVM_NUM_THREADS', 'all')}")
    mlp_section(args)
    if args.gpt:
        gpt_section(args)


if __name__ == "__main__":
    main()
