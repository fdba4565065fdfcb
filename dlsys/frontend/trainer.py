"""The training loop: a dlsys.nn model, an optimiser, every operator a TVM kernel.

numpy only gathers batches and reads back the loss and the logits; the forward pass, the
gradients and the parameter update all run as TVM-generated code.

Default learning rates (``--lr``) per optimiser, for batch 1000 on Fashion-MNIST, with
PyTorch's default initialisation: validation accuracy after 10 epochs with the numpy
reference, seed 0 (plain SGD):

    lr        0.2     0.3     0.5     1.0
    mlp       84.26   84.99   84.44   -
    logreg    82.87   -       81.23   78.52 (swinging from epoch to epoch)

SGD keeps 0.2, logreg's best and within a point of the MLP's; SGD with momentum 0.9 takes a
tenth of it (84.93 % for the MLP), Adam and AdamW PyTorch's 1e-3 (87.21 % for the MLP, 82.88 %
for logreg). The loss is the *mean* over the batch, so these are 1000 times the course's
summed-loss rates at batch 1000.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dlsys import autodiff as ad
from dlsys import nn, optim
from dlsys.data.batches import epoch_batches
from dlsys.data.mnist import Split, load_dataset
from dlsys.distributed import AllReduce
from dlsys.distributed.training import silent, training_group
from dlsys.errors import DataError, TrainingError
from dlsys.frontend import report, run_folder
from dlsys.frontend.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from dlsys.frontend.inference import MODEL_FILE, Evaluator
from dlsys.frontend.models import build_model
from dlsys.frontend.settings import (
    DEFAULT_LR,
    INPUT_SHAPES,
    OPTIMIZER_NAMES,
    SCHEDULE_NAMES,
    SETTING_NAMES,
    RunSettings,
    given_settings,
    scheduled_lr,
    seed_streams,
)
from dlsys.nn import functional as F
from dlsys.nn.serialization import save as save_model
from dlsys.optim import StepRefused

OPTIMIZERS = OPTIMIZER_NAMES
LR_SCHEDULES = SCHEDULE_NAMES
MOMENTUM = 0.9
# A batch loss this many times the first batch's means the run has diverged (a mean
# cross-entropy starts near log(classes) and only falls while training works).
DIVERGENCE_FACTOR = 1000.0
# Settings a resumed run may change (announced); every other one must match the record.
# Not the data: its metrics and checkpoint would mix two data sets under one run.
CHANGEABLE_ON_RESUME = ("epochs", "lr")


class StepReports:
    """What a trainer says of its training step's compiled program (``train_executor``):
    the memory report of every run, and ``--debug-memory``'s plan and storage table."""

    train_executor: ad.Executor

    def memory_report(self) -> str:
        """One line, for people, on the memory the training step's plan uses."""
        stats = self.train_executor.memory_stats()
        mib = 1 << 20
        line = (f"working memory {stats['planned_bytes'] / mib:.2f} MiB for "
                f"{self.train_executor.kernel_calls} kernel calls per step (one buffer per "
                f"value would take {stats['naive_bytes'] / mib:.2f} MiB)")
        budget = self.train_executor.memory_budget
        if budget is None:
            return line
        held = stats["held_bytes"]
        return (f"{line}; with {held / mib:.2f} MiB of parameters, optimiser state and batch, "
                f"{(held + stats['planned_bytes']) / mib:.2f} MiB of the "
                f"{budget / mib:.2f} MiB budget")

    def recompute_report(self) -> str:
        """What the memory budget made the step keep and recompute (``--debug-memory``)."""
        recompute = self.train_executor.program().recompute
        if recompute is None:
            return "recomputation: none (the plain plan fits the budget)"
        return recompute.describe()

    def plan_report(self) -> str:
        """The memory plan's figures, for ``--debug-memory``."""
        stats = self.train_executor.memory_stats()
        mib = 1 << 20
        return (f"memory plan: {stats['planned_bytes'] / mib:.2f} MiB in {stats['buffers']} "
                f"buffers for {self.train_executor.kernel_calls} kernel calls "
                f"({stats['planned_bytes'] / stats['naive_bytes']:.2f} of one buffer per node, "
                f"{stats['naive_bytes'] / mib:.2f} MiB; peak live "
                f"{stats['peak_live_bytes'] / mib:.2f} MiB)")

    def storage_report(self) -> str:
        """Each step's node, shape and storage id (for ``--debug-memory``)."""
        rows = self.train_executor.storage_table()
        width = max(len(name) for name, *_ in rows)
        lines = [f"{'node':{width}s}  {'shape':>12s}  storage"]
        lines += [f"{name:{width}s}  {str(shape):>12s}  {sid if sid is not None else '-':>7}  {how}"
                  for name, shape, sid, how in rows]
        return "\n".join(lines)


class Trainer(StepReports):
    """A model's training and inference executors and its optimiser."""

    def __init__(self, model: nn.Module, optimizer, batch_size: int, ctx=None,
                 input_shape: tuple[int, ...] = (784,), data_parallel: bool = False,
                 memory_budget: int | None = None):
        self.model = model
        self.batch_size = batch_size
        # Batches arrive as rows of pixels, viewed (no copy) with the model's input shape.
        self.input_shape = tuple(input_shape)
        self.optimizer = optimizer
        self.x, self.labels = ad.Variable("x"), ad.Variable("labels")
        self.params = model.parameters()
        model.train()
        logits = model(self.x)
        loss = F.cross_entropy(logits, self.labels)
        # The logits too, for the training accuracy (they exist anyway: the loss reads them).
        # One rank of an MPI job reduces the loss and gradients after each run.
        self.step = optim.TrainStep(optimizer, loss, extra=[logits],
                                    reduce=AllReduce() if data_parallel else None,
                                    divergence_factor=DIVERGENCE_FACTOR,
                                    memory_budget=memory_budget)
        self.train_executor = self.step.executor
        self.correct = self.seen = 0
        # Inference: a graph of its own, built in eval mode (dropout off, running statistics).
        self.evaluator = Evaluator(model, batch_size, ctx, self.input_shape)

    @classmethod
    def for_model(cls, name: str, seed: int, lr: float, batch_size: int,
                  optimizer: str = "sgd", hidden=None, ctx=None) -> Trainer:
        """A trainer for one of the front end's models, initialised from ``seed``."""
        model = build_model(name, seed, hidden)
        return cls(model, make_optimizer(optimizer, model.parameters(), lr), batch_size, ctx,
                   INPUT_SHAPES[name])

    def compile(self) -> float:
        """Build or load every kernel of both executors now; returns the seconds it took.

        Runs each executor once on zeros and undoes the running statistics and seeds it
        updated, so that epoch 1's time measures training like every other epoch's, not
        kernel compilation, and a compiled trainer is in the state of one never compiled.
        """
        started = time.perf_counter()
        feeds = {self.x: np.zeros((self.batch_size, *self.input_shape), dtype=np.float32),
                 self.labels: np.zeros(self.batch_size, dtype=np.int64)}
        self.train_executor.run(feeds)
        self.train_executor.undo_state_updates()
        self.evaluator.compile(self.input_shape)
        return time.perf_counter() - started

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> float:
        """One optimiser step on a batch (labels as class indices); returns its mean loss.

        Raises TrainingError if the loss is not finite or has exploded (``DIVERGENCE_FACTOR``
        times the first accepted batch's); the refused step changes no state at all (the
        parameters, the optimiser's state, batch norm's running statistics, the dropout
        seeds, the training accuracy's counts).
        """
        images = images.reshape(len(images), *self.input_shape)
        value, (logits,) = self.step.run({self.x: images, self.labels: labels})
        self.correct += int(np.sum(logits.numpy().argmax(axis=1) == labels))
        self.seen += len(labels)
        return value

    def train_epoch(self, epoch: int, split: Split, batches: list[np.ndarray],
                    progress: bool = True, desc: str | None = None) -> list[float]:
        """Run the batches (index arrays into ``split``) in order; returns each batch's loss."""
        losses: list[float] = []
        self.correct = self.seen = 0
        with tqdm(total=len(batches), desc=desc or f"epoch {epoch}", unit="batch", leave=False,
                  disable=not progress, file=sys.stderr) as bar:
            for number, idx in enumerate(batches, start=1):
                try:
                    losses.append(self.train_step(split.images[idx], split.labels[idx]))
                except StepRefused as e:
                    raise TrainingError(f"{e.reason} at epoch {epoch}, batch "
                                        f"{number}/{len(batches)}") from None
                bar.update()
                if number % 10 == 0 or number == len(batches):
                    bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        return losses

    def evaluate(self, split: Split) -> tuple[float, float, np.ndarray]:
        """Mean loss, accuracy and logits over ``split`` (the eval-mode graph)."""
        return self.evaluator.evaluate(split)

    def accuracy(self, split: Split) -> float:
        """The fraction of ``split`` whose largest logit is the true class."""
        return self.evaluate(split)[1]

    def params_numpy(self) -> dict[str, np.ndarray]:
        """Copies of the current parameters (and buffers), by state-dict name."""
        return self.model.state_dict()


def make_optimizer(name: str, params: list, lr: float, decay: float = 0.0) -> optim.Optimizer:
    """The optimiser ``name`` (one of ``OPTIMIZER_NAMES``) over ``params``: the learning
    rate goes from the run's settings to it, and from it to the update kernel."""
    if name == "sgd":
        return optim.SGD(params, lr, weight_decay=decay)
    if name == "momentum":
        return optim.SGD(params, lr, momentum=MOMENTUM, weight_decay=decay)
    if name == "adam":
        return optim.Adam(params, lr, weight_decay=decay)
    return optim.AdamW(params, lr, weight_decay=decay)


def learning_rate_at(epoch: int, settings: RunSettings | Mapping) -> float:
    """The learning rate of epoch ``epoch`` (from 1) by a run's schedule: its settings, or
    their record's learning-rate entries (``lr``, ``epochs``, ``warmup``, ``lr_schedule``)."""
    if isinstance(settings, RunSettings):
        return settings.lr_at(epoch)
    return scheduled_lr(epoch, **settings)


class TrainConfig:
    """What ``dlsys train`` was told: the settings given, as keyword arguments named as
    RunSettings' fields (left out or None: the recorded value when resuming, else the
    default), the output folder, and how to run (resume, overwrite, progress bar, memory
    report, the command line that started the run, shown where a message says how to rerun
    it)."""

    def __init__(self, out: Path, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, debug_memory: bool = False,
                 memory_budget: int | None = None, command: str | None = None,
                 **settings: object) -> None:
        unknown = sorted(set(settings) - set(SETTING_NAMES))
        if unknown:
            raise TypeError(f"TrainConfig: unknown settings {', '.join(unknown)}")
        self.out = out
        self.resume, self.overwrite, self.progress = resume, overwrite, progress
        self.debug_memory, self.command = debug_memory, command
        # How to run, not what: the results are the same under any budget, so it is not a
        # recorded setting and a resumed run may set another.
        self.memory_budget = memory_budget
        # Read by RunSettings.from_args / given_settings as a namespace of flags.
        for name in SETTING_NAMES:
            setattr(self, name, settings.get(name))


@dataclass
class TrainResult:
    """Final parameters, per-epoch metrics and test accuracy of a run."""

    params: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)
    test_acc: float = float("nan")
    summary: dict = field(default_factory=dict)


def resolve(config: TrainConfig, recorded: RunSettings | None,
            log: Callable[[str], None]) -> RunSettings:
    """The run's settings: the recorded run's when resuming (a flag that contradicts it is
    an error, except those in ``CHANGEABLE_ON_RESUME``, which are announced), else the
    flags given over the defaults."""
    if recorded is None:
        return RunSettings.from_args(config)
    record, changes = recorded.to_record(), {}
    for name, value in given_settings(config).items():
        # Compared and reported as recorded: the hidden widths as a list.
        shown = list(value) if name == "hidden" else value
        if shown == record.get(name) or (name == "data" and _same_path(value, record[name])):
            changes[name] = value
            continue
        if name == "data":
            raise run_folder.RunFolderError(
                f"--data {value} is not the data set of the run being resumed, "
                f"{record[name]}; continue that run with: dlsys train --out "
                f"{config.out} --resume (or train on {value} in another --out)")
        if name not in CHANGEABLE_ON_RESUME:
            raise run_folder.RunFolderError(
                f"--{name.replace('_', '-')} {shown} contradicts the run being resumed "
                f"({name} {record.get(name)!r}); leave it out to continue that run, or "
                f"start a new one with --overwrite")
        log(f"{name}: {record[name]} -> {value} (was recorded as {record[name]})")
        changes[name] = value
    return dataclasses.replace(recorded, **changes)


def resolve_settings(config: TrainConfig, recorded: dict | None,
                     log: Callable[[str], None]) -> dict:
    """``resolve`` over records: the settings as ``run.json`` records them."""
    settings = None if recorded is None else RunSettings.from_record(recorded)
    return resolve(config, settings, log).to_record()


def _same_path(given: str, recorded: object) -> bool:
    """``--data`` names the recorded data set, however spelt (relative, trailing slash)."""
    return isinstance(recorded, str) and \
        Path(given).expanduser().resolve() == Path(recorded).expanduser().resolve()


def run_training(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train as ``dlsys train`` does: load data, train with checkpoints, write the outputs.

    Under ``mpirun -n N``, data-parallel over the N ranks (``dlsys.distributed``): rank 0
    alone holds the run folder, logs and writes; the others train and return.
    """
    out = Path(config.out)
    group = training_group()
    if group is not None and group.rank != 0:
        return _run_locked(config, out, silent, group)
    with run_folder.locked(out):
        return _run_locked(config, out, log, group)


class ImageTask:
    """What a run of an image classifier does that a language model's does not
    (``dlsys.frontend.lm.LanguageModelTask`` is the other task): its data (MNIST-format
    images), its model, its trainer, its batches (a shuffled epoch), its rate (per epoch),
    its validation (accuracy) and its finish (test accuracy, class names)."""

    unit = "batch"

    def load(self, settings: RunSettings) -> tuple[RunSettings, object]:
        dataset = load_dataset(settings.data, settings.val_size)
        settings = dataclasses.replace(settings, data=dataset.source, val_size=len(dataset.val))
        if settings.batch_size > len(dataset.train):
            raise DataError(f"{dataset.source}: batch size {settings.batch_size} is larger "
                            f"than the {len(dataset.train)} training images")
        return settings, dataset

    def build_model(self, settings: RunSettings) -> nn.Module:
        return build_model(settings.model, settings.seed, settings.hidden)

    def trainer(self, settings: RunSettings, model: nn.Module, optimizer, dataset, group,
                start: int, memory_budget: int | None = None) -> Trainer:
        """The trainer over the model, once the images fit it."""
        input_shape = INPUT_SHAPES[settings.model]
        if math.prod(dataset.train.images.shape[1:]) != math.prod(input_shape):
            raise DataError(f"{dataset.source}: images of {dataset.train.images.shape[1:]} "
                            f"pixels; {settings.model} takes {input_shape}")
        batch = settings.batch_size if group is None else group.local_batch(settings.batch_size)
        return Trainer(model, optimizer, batch, input_shape=input_shape,
                       data_parallel=group is not None, memory_budget=memory_budget)

    def describe(self, settings: RunSettings, dataset, out: Path) -> str:
        return (f"training {settings.model} on {dataset.source} ({len(dataset.train)} train / "
                f"{len(dataset.val)} val / {len(dataset.test)} test), {settings.optimizer}, "
                f"batch {settings.batch_size}, {settings.describe_lr()}, seed {settings.seed}, "
                f"into {out}")

    def epoch_batches(self, run: _Run, epoch: int) -> list[np.ndarray]:
        """The epoch's rate set, and its batches: index arrays of a fresh permutation."""
        run.optimizer.lr = run.settings.lr_at(epoch)
        batches = epoch_batches(run.shuffle_rng, len(run.dataset.train),
                                run.settings.batch_size)
        return batches if run.group is None else run.group.shard(batches)

    def validate(self, run: _Run, row: dict) -> str:
        """Validation accuracy and loss into the row; the log line's part."""
        if not len(run.dataset.val):
            return ""
        val_loss, row["val_acc"], _ = run.trainer.evaluate(run.dataset.val)
        row["val_loss"] = val_loss
        return f"  val acc {100 * row['val_acc']:.2f}%"

    def finish(self, run: _Run) -> tuple[dict, str, dict]:
        """The test accuracy, the closing log line and the model file's metadata."""
        _, test_acc, _ = run.trainer.evaluate(run.dataset.test)
        history = run.history
        metadata = {"input_shape": list(INPUT_SHAPES[run.settings.model]),
                    "classes": class_names(run.dataset.source), "data": run.dataset.source}
        return ({"test_acc": test_acc,
                 "val_acc": history[-1].get("val_acc") if history else None},
                f"test acc {100 * test_acc:.2f}%", metadata)


def task_for(model: str):
    """The task a model's run follows: the GPT's, or the image classifiers'."""
    if model == "gpt":
        from dlsys.frontend.lm import LanguageModelTask  # TVM-free until a GPT is trained

        return LanguageModelTask()
    return ImageTask()


@dataclass
class _Run:
    """What preparing a run hands to its loop and its finish."""

    out: Path
    log: Callable[[str], None]
    group: object | None  # the MPI ranks' training group, None in one process
    settings: RunSettings
    dataset: object
    model: nn.Module
    optimizer: object
    trainer: Trainer
    shuffle_rng: np.random.Generator
    history: list[dict]
    start: int  # the last epoch already trained (the checkpoint's)
    resumed: bool
    task: object = None  # ImageTask or the language model's

    @property
    def writer(self) -> bool:
        """Whether this process owns the run folder: one process, or MPI rank 0."""
        return self.group is None or self.group.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT_NAME


def _run_locked(config: TrainConfig, out: Path, log: Callable[[str], None],
                group=None) -> TrainResult:
    """Prepare, train and finish a run, with the run folder locked (by rank 0 alone)."""
    run = _prepare(config, out, log, group)
    if isinstance(run, TrainResult):  # a finished run, nothing to resume
        return run
    _train_epochs(run, config)
    if not run.writer:
        return TrainResult(run.trainer.params_numpy())
    return _finish(run)


def _read_resume(config: TrainConfig, out: Path, log: Callable[[str], None],
                 group) -> tuple[RunSettings | None, Checkpoint | None, bool]:
    """The recorded settings, the checkpoint and whether the checkpoint's run wrote its model
    (it ended, not only its epochs), as rank 0 finds them in its run folder."""
    checkpoint = recorded = None
    finished = False
    writer = group is None or group.rank == 0
    if writer:
        remove_stale_temp_files(out)
        run_folder.prepare(out, config.resume, config.overwrite, config.command)
    if config.resume and writer:
        recorded = run_folder.recorded_settings(out)
        if (out / CHECKPOINT_NAME).exists():
            checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
            recorded = recorded or RunSettings.from_record(
                checkpoint.config, f"{out / CHECKPOINT_NAME}: unusable checkpoint")
            finished = (out / MODEL_FILE).exists()
        if recorded is None:
            log(f"nothing to resume in {out}; starting from scratch")
    if group is not None:  # every rank continues what rank 0 found in its run folder
        recorded, checkpoint, finished = group.share((recorded, checkpoint, finished))
    return recorded, checkpoint, finished


def _load_data(settings: RunSettings, config: TrainConfig, out: Path,
               group) -> tuple[RunSettings, object]:
    """The run's data set, checked against its settings (and the other ranks'), and the
    settings with the data set's source and validation size, which rank 0 records in the
    run folder."""
    settings, dataset = task_for(settings.model).load(settings)
    if group is not None:
        group.check_agreement(settings, dataset, config.resume)
    if group is None or group.rank == 0:
        run_folder.record_settings(out, settings)
    return settings, dataset


def _prepare(config: TrainConfig, out: Path, log: Callable[[str], None],
             group) -> _Run | TrainResult:
    """Everything before the first epoch: the run folder, the settings (recorded or given),
    the data, the model and optimiser restored from the checkpoint, the compiled trainer.
    A TrainResult when the run being resumed has finished its epochs."""
    recorded, checkpoint, finished = _read_resume(config, out, log, group)
    settings = resolve(config, recorded, log)  # checked as it is made
    if finished and checkpoint.epoch >= settings.epochs:
        # Evaluating again would only rewrite the run's files with what they hold.
        log(f"{out}: the run finished its {checkpoint.epoch} epochs; nothing to resume. "
            f"To train it on, give the new total: {run_folder.resume_command(out)} --epochs "
            f"{checkpoint.epoch + 10} trains epochs {checkpoint.epoch + 1}-"
            f"{checkpoint.epoch + 10} from its checkpoint")
        return TrainResult(checkpoint.params, list(checkpoint.metrics))
    settings, dataset = _load_data(settings, config, out, group)
    run = _restore(out, log, group, settings, dataset, checkpoint, config.memory_budget)
    _start_trainer(run, config)
    return run


def _restore(out: Path, log: Callable[[str], None], group, settings: RunSettings, dataset,
             checkpoint: Checkpoint | None, memory_budget: int | None = None) -> _Run:
    """The model, optimiser, shuffling and history: the checkpoint's, else fresh from the
    seed; and the trainer over them, once the images fit the model."""
    task = task_for(settings.model)
    model = task.build_model(settings)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.params)
        history, start = list(checkpoint.metrics), checkpoint.epoch
        shuffle_rng = np.random.default_rng()
        shuffle_rng.bit_generator.state = checkpoint.rng_state
    else:
        history, start = [], 0
        _, shuffle_rng = seed_streams(settings.seed)
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.lr,
                               settings.weight_decay)
    if checkpoint is not None and checkpoint.optimizer_state:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    if checkpoint is not None:
        log(f"resuming from {out / CHECKPOINT_NAME} after epoch {start}")
    trainer = task.trainer(settings, model, optimizer, dataset, group, start, memory_budget)
    return _Run(out, log, group, settings, dataset, model, optimizer, trainer, shuffle_rng,
                history, start, checkpoint is not None, task)


def _start_trainer(run: _Run, config: TrainConfig) -> None:
    """Say what is trained, compile the kernels and report the memory plan."""
    settings, log, group = run.settings, run.log, run.group
    log(run.task.describe(settings, run.dataset, run.out))
    if group is not None:
        log(f"data-parallel over {group.size} MPI ranks, {run.trainer.batch_size} images of "
            f"each batch and {group.threads} TVM thread(s) per rank")
    seconds = run.trainer.compile()
    log(f"kernels ready in {seconds:.2f}s")
    log(run.trainer.memory_report())
    if config.debug_memory:
        log(run.trainer.plan_report())
        if config.memory_budget is not None:
            log(run.trainer.recompute_report())
        log(run.trainer.storage_report())


def _train_epochs(run: _Run, config: TrainConfig) -> None:
    """Train the epochs after ``run.start``; rank 0 evaluates, logs and checkpoints each."""
    settings, trainer, group = run.settings, run.trainer, run.group
    epochs = settings.epochs
    for epoch in range(run.start + 1, epochs + 1):
        batches = run.task.epoch_batches(run, epoch)
        started = time.perf_counter()
        try:
            losses = trainer.train_epoch(epoch, run.dataset.train, batches,
                                         config.progress and run.writer,
                                         desc=f"epoch {epoch}/{epochs}")
        except TrainingError as e:
            kept = (f"checkpoint of epoch {epoch - 1} kept in {run.ckpt_path}" if epoch > 1
                    else "no checkpoint written")
            raise TrainingError(f"{e}; {kept}") from None
        if group is not None:  # the training accuracy over every rank's shards
            trainer.correct, trainer.seen = group.total(trainer.correct, trainer.seen)
        if run.writer:  # rank 0 alone evaluates, logs and writes
            _end_epoch(run, epoch, losses, round(time.perf_counter() - started, 4))


def _end_epoch(run: _Run, epoch: int, losses: list[float], epoch_time: float) -> None:
    """Evaluate an epoch on the validation split, log it, add it to the history and write
    the checkpoint and the metrics."""
    trainer = run.trainer
    row = {"epoch": epoch, "loss": float(np.mean(losses)), "epoch_time_s": epoch_time}
    line = (f"epoch {epoch}/{run.settings.epochs}  loss {row['loss']:.4f}  time "
            f"{epoch_time:.2f}s")
    started = time.perf_counter()
    line += run.task.validate(run, row)
    if trainer.seen:  # a language model counts no training accuracy
        row["train_acc"] = trainer.correct / trainer.seen
    row.update(eval_time_s=round(time.perf_counter() - started, 4), lr=run.optimizer.lr,
               batch_losses=[round(v, 5) for v in losses])
    if run.resumed and epoch == run.start + 1:
        row["resumed"] = 1  # the plot marks where the run was resumed
    run.history.append(row)
    run.log(line)
    save_checkpoint(run.ckpt_path, Checkpoint(epoch, trainer.params_numpy(),
                                              run.shuffle_rng.bit_generator.state, run.history,
                                              run.settings.to_record(), run.settings.optimizer,
                                              optimizer_arrays(run.optimizer)))
    report.write_metrics(run.out, run.history, {"settings": run.settings.to_record()})


def _finish(run: _Run) -> TrainResult:
    """After the last epoch (rank 0): the test accuracy, the metrics, parameters, model and
    plot written to the run folder."""
    settings, history, out = run.settings, run.history, run.out
    figures, line, metadata = run.task.finish(run)
    final = run.trainer.params_numpy()
    summary = {"settings": settings.to_record(), **figures,
               "resumed_at": [row["epoch"] - 1 for row in history if row.get("resumed")]}
    run.log(line)
    report.write_metrics(out, history, summary)
    report.write_params(out, final)
    save_model(run.model, out / MODEL_FILE, metadata=metadata)
    if history:
        report.plot_curves(out, history, f"dlsys {settings.model}, {settings.optimizer} "
                                         f"{settings.describe_lr()}, batch "
                                         f"{settings.batch_size}", summary)
    run.log(f"wrote {MODEL_FILE}, {report.METRICS_JSON}, {report.PLOT_PNG} and "
            f"{CHECKPOINT_NAME} to {out}")
    return TrainResult(final, history, figures.get("test_acc", float("nan")), summary)


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def class_names(source: str) -> list[str]:
    """What each class index means: Fashion-MNIST's article names, else the digits."""
    if "fashion" in source.lower():
        return list(FASHION_CLASSES)
    return [str(digit) for digit in range(10)]


def optimizer_arrays(optimizer) -> dict[str, np.ndarray]:
    """The optimiser's state as arrays, for the checkpoint."""
    state = optimizer.state_dict()
    return {name: np.asarray(value) for name, value in state.items()}


__all__ = ["Trainer", "TrainConfig", "TrainResult", "run_training", "make_optimizer",
           "learning_rate_at", "resolve", "resolve_settings", "OPTIMIZERS", "LR_SCHEDULES",
           "DEFAULT_LR"]
