"""``dlsys train --model gpt``: the character-level language model's part of a run.

The run loop is the image models' (``dlsys.frontend.trainer``: run folder, resume,
checkpoints, metrics, plot, model file); this module is what differs, as a *task*: the
data (a text corpus, ``dlsys.data.text``), the model (``dlsys.nn.gpt``), what a batch is
(random windows of ``context`` characters and their next characters), how the learning rate
moves (per step: a linear warm-up, then a cosine decay, from ``dlsys.optim``'s schedules)
and how a model is judged (bits per character on the held-out tail).

An epoch is ``steps_per_epoch`` optimiser steps (default 100), after each of which the run
is evaluated, checkpointed and can be resumed, as after an image epoch. The batches are
drawn from the run's shuffling stream, so a resumed run draws what the whole run would.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np
from tqdm import tqdm

from dlsys import autodiff as ad
from dlsys import optim
from dlsys.data.text import TextData, load_text, random_batch, windows
from dlsys.errors import DataError, TrainingError
from dlsys.frontend.settings import RunSettings, seed_streams
from dlsys.frontend.trainer import DIVERGENCE_FACTOR, StepReports
from dlsys.nn import functional as F
from dlsys.nn import init
from dlsys.nn.gpt import GPT
from dlsys.ops import reshape_op
from dlsys.optim import StepRefused

# Gradients are clipped to this global L2 norm in the update kernel, as nanoGPT and most
# transformer recipes do: a rare large gradient then cannot undo what the warm-up protected.
MAX_GRAD_NORM = 1.0
# Cross-entropy's ignore_index: the padding rows of the last validation batch.
IGNORE = -100
LN2 = math.log(2)


def build_gpt(settings: RunSettings, vocab_size: int) -> GPT:
    """A fresh GPT of the run's shape, initialised from the seed's initialisation stream."""
    with init.using_generator(seed_streams(settings.seed)[0]):
        return GPT(vocab_size, settings.context, settings.width, settings.heads,
                   settings.layers, settings.dropout)


def step_schedule(optimizer: optim.Optimizer, settings: RunSettings,
                  done: int = 0) -> optim.LRScheduler | None:
    """The learning rate per step: ``warmup`` epochs of linear warm-up, then the run's
    schedule over the remaining steps (cosine: down to 0 at the last step; step: x0.1 after
    each third; constant), moved on to step ``done`` (a resumed run's). None when the rate
    never changes."""
    # The run's rate is the base, not the rate a resumed optimiser's state holds.
    optimizer.initial_lr = settings.lr
    steps = settings.epochs * settings.steps_per_epoch
    warm = min(settings.warmup * settings.steps_per_epoch, steps - 1)
    rest = steps - warm
    if settings.lr_schedule == "cosine":
        main = optim.CosineAnnealingLR(optimizer, T_max=rest)
    elif settings.lr_schedule == "step":
        main = optim.StepLR(optimizer, step_size=max(1, math.ceil(rest / 3)))
    else:
        main = None
    if warm > 0:
        # From 1/(warm + 1) of the rate, reaching it at the end of the warm-up.
        warmup = optim.LinearWarmup(optimizer, warm, start_factor=1 / (warm + 1))
        schedule = warmup if main is None else optim.SequentialLR(
            optimizer, [warmup, main], milestones=[warm])
    else:
        schedule = main
    for _ in range(done if schedule is not None else 0):
        schedule.step()
    return schedule


class LanguageModelTrainer(StepReports):
    """A GPT's training step (AdamW by default, clipped gradients) and its evaluation graph
    over (B, T) windows; the run loop's ``Trainer`` for the character model."""

    def __init__(self, model: GPT, optimizer: optim.Optimizer, settings: RunSettings,
                 done_steps: int = 0, memory_budget: int | None = None):
        self.model, self.optimizer = model, optimizer
        self.batch_size, self.context = settings.batch_size, settings.context
        self.ids, self.targets = ad.Variable("ids"), ad.Variable("targets")
        self.positions = ad.Variable("positions")
        self.schedule = step_schedule(optimizer, settings, done_steps)
        model.train()
        loss = self._loss(model(self.ids, self.positions))
        self.step = optim.TrainStep(optimizer, loss, divergence_factor=DIVERGENCE_FACTOR,
                                    max_grad_norm=MAX_GRAD_NORM, memory_budget=memory_budget)
        self.train_executor = self.step.executor
        # Inference: a graph of its own, built in eval mode (dropout off).
        model.eval()
        logits = model(self.ids, self.positions)
        model.train()
        self.eval_executor = ad.Executor([self._loss(logits), logits])
        self.correct = self.seen = 0

    def _loss(self, logits):
        """The mean cross-entropy of (B, T, V) logits against (B, T) targets."""
        vocab = self.model.vocab_size
        return F.cross_entropy(reshape_op(logits, (-1, vocab)), reshape_op(self.targets, (-1,)),
                               ignore_index=IGNORE)

    def _feeds(self, x: np.ndarray, y: np.ndarray) -> dict:
        return {self.ids: x, self.targets: y, self.positions: self.model.positions(x.shape[1])}

    def compile(self) -> float:
        """Build every kernel of both graphs and of the update now (undoing what the dry runs
        changed), so that epoch 1's time is training's; returns the seconds it took."""
        started = time.perf_counter()
        zeros = np.zeros((self.batch_size, self.context), np.int64)
        # A whole step, for the clipped update's kernel too (built at its first use), then
        # the parameters, the optimiser's state and the divergence check's yardstick back.
        params, state = self.model.state_dict(), self.optimizer.state_dict()
        self.step(self._feeds(zeros, zeros))
        self.model.load_state_dict(params)
        self.optimizer.load_state_dict(state)
        self.step.first_loss = None
        self.eval_executor.run(self._feeds(zeros, zeros))
        return time.perf_counter() - started

    def train_epoch(self, epoch: int, split, batches: list, progress: bool = True,
                    desc: str | None = None) -> list[float]:
        """One optimiser step per (inputs, targets) batch, the rate moved after each;
        returns each step's loss (nats per character)."""
        losses: list[float] = []
        with tqdm(total=len(batches), desc=desc or f"epoch {epoch}", unit="step",
                  leave=False, disable=not progress, file=sys.stderr) as bar:
            for number, (x, y) in enumerate(batches, start=1):
                try:
                    losses.append(self.step(self._feeds(x, y)))
                except StepRefused as e:
                    raise TrainingError(f"{e.reason} at epoch {epoch}, step "
                                        f"{number}/{len(batches)}") from None
                if self.schedule is not None:
                    self.schedule.step()
                bar.update()
                if number % 10 == 0 or number == len(batches):
                    bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        return losses

    def evaluate(self, ids: np.ndarray) -> tuple[float, float]:
        """Mean cross-entropy (nats per character) and next-character accuracy over every
        whole window of ``ids`` (see ``dlsys.data.text.windows``), in batches of the
        training batch's size; the last batch is padded with ignored rows."""
        inputs, targets = windows(ids, self.context)
        total = correct = 0.0
        for start in range(0, len(inputs), self.batch_size):
            x, y = inputs[start:start + self.batch_size], targets[start:start + self.batch_size]
            count = len(x)
            if count < self.batch_size:
                pad = self.batch_size - count
                x = np.concatenate([x, np.zeros((pad, self.context), np.int64)])
                y = np.concatenate([y, np.full((pad, self.context), IGNORE, np.int64)])
            loss, logits = self.eval_executor.run(self._feeds(x, y),
                                                  convert_to_numpy_ret_vals=True)
            total += float(loss[0]) * count * self.context
            correct += float(np.sum(logits[:count].argmax(axis=-1) == y[:count]))
        return total / targets.size, correct / targets.size

    def params_numpy(self) -> dict[str, np.ndarray]:
        return self.model.state_dict()


class LanguageModelTask:
    """What a ``dlsys train --model gpt`` run does differently from an image model's (see
    the module docstring); ``dlsys.frontend.trainer`` calls it at each of those points."""

    unit = "step"

    def load(self, settings: RunSettings) -> tuple[RunSettings, TextData]:
        """The corpus, and the settings with its source, validation size and vocabulary; a
        resumed run's corpus must have the recorded vocabulary."""
        data = load_text(settings.data, settings.context, settings.val_size)
        if settings.vocab is not None and settings.vocab != data.vocab.chars:
            raise DataError(f"{data.source}: its characters are not those of the run being "
                            f"resumed ({len(data.vocab)} now, {len(settings.vocab)} recorded); "
                            f"the model's vocabulary cannot change")
        settings = dataclasses.replace(settings, data=data.source, val_size=len(data.val),
                                       vocab=data.vocab.chars)
        return settings, data

    def build_model(self, settings: RunSettings) -> GPT:
        return build_gpt(settings, len(settings.vocab))

    def trainer(self, settings: RunSettings, model: GPT, optimizer, data: TextData, group,
                start: int, memory_budget: int | None = None) -> LanguageModelTrainer:
        if group is not None:
            raise DataError("--model gpt trains in one process; run it without mpirun")
        return LanguageModelTrainer(model, optimizer, settings, start * settings.steps_per_epoch,
                                    memory_budget)

    def describe(self, settings: RunSettings, data: TextData, out) -> str:
        chars = settings.steps_per_epoch * settings.batch_size * settings.context
        return (f"training gpt on {data.source} ({len(data.train)} train / {len(data.val)} "
                f"val characters, vocabulary of {len(data.vocab)}), context "
                f"{settings.context}, width {settings.width}, {settings.heads} heads, "
                f"{settings.layers} layers, {settings.optimizer}, batch {settings.batch_size}"
                f", {settings.describe_lr()}, seed {settings.seed}, into {out}\n"
                f"an epoch is {settings.steps_per_epoch} steps of {settings.batch_size} "
                f"windows of {settings.context} characters ({chars} characters, "
                f"{chars / len(data.train):.2f} of the training text); the rate moves every "
                f"step; gradients clipped to norm {MAX_GRAD_NORM}")

    def epoch_batches(self, run, epoch: int) -> list:
        """The epoch's (inputs, targets) batches, drawn from the run's shuffling stream."""
        settings = run.settings
        return [random_batch(run.dataset.train, run.shuffle_rng, settings.batch_size,
                             settings.context) for _ in range(settings.steps_per_epoch)]

    def validate(self, run, row: dict) -> str:
        """The validation tail's loss in the row (nats, as ``loss``), in bits per character
        and as next-character accuracy; the log line's part."""
        if not len(run.dataset.val):
            return ""
        row["val_loss"], row["val_acc"] = run.trainer.evaluate(run.dataset.val)
        row["val_bpc"] = row["val_loss"] / LN2
        return f"  val {row['val_bpc']:.3f} bits/char (next-char acc {100 * row['val_acc']:.1f}%)"

    def finish(self, run) -> tuple[dict, str, dict]:
        """The summary's figures, the closing log line and the model file's metadata."""
        last = run.history[-1] if run.history else {}
        bpc = last.get("val_bpc")
        line = ("final validation: " + (f"{bpc:.3f} bits per character" if bpc is not None
                                        else "none (--val-size 0)"))
        metadata = {"input_shape": [run.settings.context], "vocab": run.settings.vocab,
                    "data": run.dataset.source, "task": "character language model"}
        return {"val_bpc": bpc, "val_acc": last.get("val_acc")}, line, metadata


__all__ = ["LanguageModelTask", "LanguageModelTrainer", "build_gpt", "step_schedule",
           "MAX_GRAD_NORM"]
