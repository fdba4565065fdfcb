"""``dlsys inspect``: what the compiler makes of a model, printed and drawn.

The target is a built-in model (as ``dlsys train`` builds it), a dlsys model file or an ONNX
file (loaded as ``dlsys eval`` loads them). The graph is compiled by the same pipeline the
executor runs (``dlsys.passes.pipeline``) and printed as its table of steps and memory plan;
``--plot`` draws each storage buffer of the plan over the steps during which a value lives
in it, so a reader sees how values of disjoint lifetimes share memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import DataError
from dlsys.frontend import inference
from dlsys.frontend.models import build_model
from dlsys.frontend.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_SIZES,
    IMAGE_MODELS,
    INPUT_SHAPES,
)
from dlsys.graph import Node, Shape, find_topo_sort, short_name
from dlsys.nn import functional as F
from dlsys.passes import pipeline
from dlsys.passes.memory_plan import live_ranges

# A batch this large makes plans of gigabytes and kernels that take minutes to build: more
# than anyone reading a plan needs, and a typo (--batch-size 1000000) should not allocate.
MAX_BATCH = 1 << 16


@dataclass(frozen=True)
class Target:
    """A model to inspect: its module, one example's input shape, the batch a file fixes
    (None when free) and the batch ``dlsys train`` trains it in (1 for a file: no default
    is recorded for it)."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]
    fixed_batch: int | None
    train_batch: int = 1


@dataclass(frozen=True)
class Lifetime:
    """One value's stay in a storage buffer: steps ``first`` to ``last`` inclusive (indices
    in the program's table), ``bytes`` of the buffer's ``storage_bytes``."""

    storage: int
    value: str
    first: int
    last: int
    bytes: int
    storage_bytes: int


def load_target(text: str) -> Target:
    """A built-in model name, or a model file / run folder / ONNX file, as a ``Target``."""
    path = Path(text)
    if text in IMAGE_MODELS and not path.exists():  # a file named "mlp" in the folder wins
        return Target(text, build_model(text, seed=0), tuple(INPUT_SHAPES[text]), None,
                      DEFAULT_BATCH_SIZES.get(text, DEFAULT_BATCH_SIZE))
    if not path.exists():
        raise DataError(f"{text}: no such file, nor a built-in model "
                        f"({', '.join(IMAGE_MODELS)})")
    path = inference.model_file(path)
    # eval and predict's loader: the same checks of the input shape and the same messages.
    model = inference._load(path)
    return Target(str(path), model, tuple(model.metadata["input_shape"]),
                  getattr(model, "fixed_batch", None))


def choose_batch(target: Target, batch_size: int | None, train: bool = False) -> int:
    """``--batch-size``, else the file's fixed batch, else (for ``train``) the batch ``dlsys
    train`` compiles its step for, else 1. A file's fixed batch is the only one its graph may
    take (its reshapes bake it in)."""
    if target.fixed_batch is not None:
        if batch_size not in (None, target.fixed_batch):
            raise DataError(f"{target.name} fixes the batch size at {target.fixed_batch}; "
                            f"leave --batch-size out or give {target.fixed_batch}")
        return target.fixed_batch
    if batch_size is not None and batch_size > MAX_BATCH:
        raise DataError(f"--batch-size {batch_size}: dlsys inspect takes at most {MAX_BATCH}")
    return batch_size or (target.train_batch if train else 1)


def _feed_shapes(outputs: list[Node], feeds: dict[Node, Shape]) -> dict[Node, Shape]:
    """Shapes of every placeholder the outputs read: the fed ones, and each parameter's own
    (a parameter holds its value, as the executor binds it)."""
    shapes = {}
    for node in find_topo_sort(outputs):
        if node.op.is_placeholder:
            shapes[node] = feeds[node] if node in feeds else tuple(node.data.shape)
    return shapes


def inference_program(target: Target, batch: int) -> pipeline.Program:
    """What ``dlsys predict`` runs (logits and probabilities, eval mode), with the weights
    folded as constants, as an inference session compiles them."""
    x = ad.Variable("x")
    target.model.eval()
    logits = target.model(x)
    outputs = [logits, ad.softmax_op(logits)]
    shapes = _feed_shapes(outputs, {x: (batch, *target.input_shape)})
    weights = frozenset(n for n in shapes if n is not x)
    return pipeline.compile(outputs, shapes, pipeline.CompileOptions(constants=weights))


def training_program(target: Target, batch: int,
                     memory_budget: int | None = None) -> pipeline.Program:
    """What ``dlsys train`` compiles for one step: the loss, the logits and the gradients of
    every parameter, in training mode (labels are class indices, one per image); within
    ``memory_budget`` bytes when given (the optimiser's state, not part of this program, is
    not counted)."""
    x, labels = ad.Variable("x"), ad.Variable("labels")
    target.model.train()
    logits = target.model(x)
    loss = F.cross_entropy(logits, labels)
    outputs = [loss, logits, *ad.gradients(loss, target.model.parameters())]
    shapes = _feed_shapes(outputs, {x: (batch, *target.input_shape), labels: (batch,)})
    return pipeline.compile(outputs, shapes, pipeline.CompileOptions(memory_budget=memory_budget))


def lifetimes(program: pipeline.Program) -> list[Lifetime]:
    """Each planned value's storage and live steps, from the memory plan's own live ranges
    (over the per-run steps it planned, shifted to the table's step numbers)."""
    plan, offset = program.plan, program.first_per_run_step
    first, last = live_ranges(program.steps[offset:], set(program.outputs))
    end = len(program.steps) - 1  # a value kept past the run lives to the last step
    rows = []
    for node, start in first.items():
        if node not in plan.storage_of:
            continue
        sid = plan.storage_of[node]
        rows.append(Lifetime(sid, short_name(node), start + offset, min(last[node] + offset, end),
                             int(np.prod(program.shapes[node])) * plan.itemsize,
                             plan.storage_elements[sid] * plan.itemsize))
    return sorted(rows, key=lambda r: (r.storage, r.first))


def live_bytes(rows: list[Lifetime], steps: int) -> list[int]:
    """Bytes of planned values alive at each step (what no plan can go below)."""
    alive = [0] * steps
    for r in rows:
        for t in range(r.first, r.last + 1):
            alive[t] += r.bytes
    return alive


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: plan sizes span bytes to hundreds of megabytes."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover  (the loop returns at MiB)


def _draw_live(ax, program: pipeline.Program, alive: list[int]) -> None:
    """The top panel: live bytes per step against the plan's total and the naive total."""
    # Each step's bytes over its whole width, as the bars below span theirs.
    edges = np.arange(len(alive) + 1) - 0.5
    ax.stairs(alive, edges, fill=True, alpha=0.4, color="tab:blue")
    ax.stairs(alive, edges, color="tab:blue", label="live values")
    stats = program.plan.stats()
    ax.axhline(stats["planned_bytes"], color="tab:red", linestyle="--",
               label=f"planned {human_bytes(stats['planned_bytes'])}")
    ax.set_ylabel("live")
    ax.yaxis.set_major_formatter(lambda value, _: human_bytes(value))
    ax.legend(loc="upper right", fontsize=8)


def _draw_buffers(ax, rows: list[Lifetime], buffers: int, chars_per_step: float) -> None:
    """One row per storage buffer: a bar per value it holds, as tall as the value's share of
    the buffer (an in-place or smaller value fills less of it), named where it fits
    (``chars_per_step``: how many letters of the label one step's width holds)."""
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan"]
    for i, r in enumerate(rows):
        height = 0.8 * max(r.bytes / max(r.storage_bytes, 1), 0.1)
        width = r.last - r.first + 1
        ax.barh(r.storage, width, left=r.first - 0.5, height=height,
                color=colours[i % len(colours)], alpha=0.8, edgecolor="black", linewidth=0.4)
        room = int(width * chars_per_step) - 1
        if room >= 4:  # a name cut to the bar's width, so that it never runs into the next
            label = r.value if len(r.value) <= room else r.value[:room - 1] + "…"
            ax.text(r.first - 0.4, r.storage, label, va="center", fontsize=6, clip_on=True)
    sizes = {r.storage: r.storage_bytes for r in rows}
    ax.set_yticks(range(buffers))
    ax.set_yticklabels([f"s{sid}  {human_bytes(sizes.get(sid, 0))}" for sid in range(buffers)],
                       fontsize=7)
    ax.set_ylim(buffers - 0.5, -0.5)  # storage 0 on top, as in the printed table
    ax.set_xlabel("step (the table's #)")
    ax.set_ylabel("storage buffer")


def plot_plan(program: pipeline.Program, title: str, path: Path) -> None:
    """Draw the memory plan's buffers over the steps into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = lifetimes(program)
    buffers = len(program.plan.storage_elements)
    width, steps = 10.0, len(program.steps)
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(width, 2.5 + 0.28 * max(buffers, 4)),
        gridspec_kw={"height_ratios": [1, max(2, buffers / 6)]})
    _draw_live(top, program, live_bytes(rows, steps))
    # About 0.055 inch a letter at 6 points over the ~85 % of the width the axes take.
    _draw_buffers(bottom, rows, buffers, 0.85 * width / max(steps, 1) / 0.055)
    stats = program.plan.stats()
    top.set_title(f"{title}\nplanned {human_bytes(stats['planned_bytes'])} in {buffers} "
                  f"buffers; one buffer per node {human_bytes(stats['naive_bytes'])}; live "
                  f"peak {human_bytes(stats['peak_live_bytes'])}", fontsize=9)
    bottom.set_xlim(-0.5, steps - 0.5)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)


def inspect_command(target_text: str, train: bool, batch_size: int | None,
                    plot: Path | None, log: Callable[[str], None] = print,
                    memory_budget: int | None = None) -> pipeline.Program:
    """``dlsys inspect``: print the program of a model's inference (or, with ``train``, its
    training step, within ``memory_budget`` bytes when given) and its memory plan; draw the
    plan into ``plot``. Returns the program."""
    if plot is not None and plot.suffix.lower() != ".png":
        raise DataError(f"--plot {plot}: name a .png file")
    if memory_budget is not None and not train:
        raise DataError("--memory-budget plans a training step: add --train")
    target = load_target(target_text)
    batch = choose_batch(target, batch_size, train)
    if train:
        program = training_program(target, batch, memory_budget)
        what = f"training step at batch {batch} (training mode)"
        log(f"{target.name}: {what}: loss, logits and the gradients of "
            f"{len(target.model.parameters())} parameters; the optimiser's update is not a "
            f"graph node (it runs as one kernel of its own after this program)")
    else:
        program = inference_program(target, batch)
        what = f"inference at batch {batch} (eval mode)"
        log(f"{target.name}: {what}: logits and probabilities, the weights folded as "
            f"constants")
    log(f"input {list(target.input_shape)} per image, "
        f"{math.prod(target.input_shape)} values")
    log(pipeline.describe(program))
    if memory_budget is not None:
        log(program.recompute.describe() if program.recompute is not None
            else "recomputation: none (the plain plan fits the budget)")
    if plot is not None:
        plot_plan(program, f"{target.name}: {what}", plot)
        log(f"wrote {plot}")
    return program
