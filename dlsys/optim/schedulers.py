"""Learning-rate schedules: each sets ``optimizer.lr`` from a closed formula of its step
count, PyTorch's documented formulas. Setting the rate copies one number to the device and
compiles nothing."""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Sequence

import numpy as np

from dlsys.checks import check_constant
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.optim.base import Optimizer, check_rate


def _check_count(owner: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{owner}: {name} must be an integer, got {value!r}")
    if value <= 0:
        raise ArgumentError(f"{owner}: {name} must be positive, got {value!r}")
    return int(value)


class LRScheduler:
    """A schedule over ``optimizer``: ``lr_at(epoch)`` from the rate the optimiser had when
    its first schedule was made (``base_lr``, its ``initial_lr``). As in PyTorch, making it
    applies epoch 0 and each ``step()`` moves to the next epoch (call it per epoch or per
    batch, as you define it).
    Setting ``optimizer.lr`` by hand is overwritten at the next ``step()``."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise ArgumentTypeError(f"{type(self).__name__}: optimizer must be a dlsys "
                                    f"optimiser, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if optimizer.initial_lr is None:
            optimizer.initial_lr = optimizer.lr
        self.base_lr = optimizer.initial_lr
        self.last_epoch = 0
        self._apply()

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def _apply(self) -> None:
        # Annealing may end at exactly 0, which a user's lr may not be: checked here with 0.
        rate = check_rate(type(self).__name__, "the scheduled lr", self.lr_at(self.last_epoch),
                          self.optimizer.dtype, allow_zero=True)
        self.optimizer._write_lr(rate)

    def state_dict(self) -> dict[str, float]:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore ``state_dict`` (checked first) and set the optimiser's rate to match."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"base_lr", "last_epoch"}:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict)
            raise ShapeError(f"{owner} takes a dict with keys base_lr and last_epoch, got "
                             f"{keys}")
        base = check_rate(owner, "base_lr", _scalar(owner, "base_lr", state_dict["base_lr"]),
                          self.optimizer.dtype)
        epoch = _scalar(owner, "last_epoch", state_dict["last_epoch"])
        if epoch != math.floor(epoch) or epoch < 0:
            raise ArgumentError(f"{owner}: last_epoch must be a whole number >= 0, got {epoch}")
        self._restore(base, int(epoch))
        self._apply()

    def _restore(self, base_lr: float, epoch: int) -> None:
        self.base_lr, self.last_epoch = base_lr, epoch


def _scalar(owner: str, name: str, value) -> float:
    """A number, also as the 0-d array a state saved to ``.npz`` comes back as."""
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iuf":
        raise ArgumentTypeError(f"{owner}: {name} must be a number, got {value!r}")
    return check_constant(f"{owner}: {name}", array.item())


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = _check_count("StepLR", "step_size", step_size)
        self.gamma = check_rate("StepLR", "gamma", gamma, "float64")
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``: from
    ``base_lr`` down to ``eta_min`` at ``T_max``, and back up after it (a cosine's period,
    as PyTorch's formula continues)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0):  # noqa: N803
        self.T_max = _check_count("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = check_rate("CosineAnnealingLR", "eta_min", eta_min, "float64",
                                  allow_zero=True)
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        cosine = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


class LinearWarmup(LRScheduler):
    """PyTorch's ``LinearLR`` ending at the full rate: ``lr = base_lr * (start_factor +
    (1 - start_factor) * min(epoch, warmup_steps) / warmup_steps)``, a straight line from
    ``start_factor * base_lr`` to ``base_lr`` over ``warmup_steps`` steps, then constant."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 1 / 3):
        self.warmup_steps = _check_count("LinearWarmup", "warmup_steps", warmup_steps)
        self.start_factor = check_rate("LinearWarmup", "start_factor", start_factor, "float64")
        if self.start_factor > 1:
            raise ArgumentError(f"LinearWarmup: start_factor must be in (0, 1], got "
                                f"{start_factor!r}")
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        progress = min(epoch, self.warmup_steps) / self.warmup_steps
        return self.base_lr * (self.start_factor + (1 - self.start_factor) * progress)


class SequentialLR(LRScheduler):
    """PyTorch's ``SequentialLR``: ``schedulers[0]`` until ``milestones[0]``, then
    ``schedulers[1]`` from its own epoch 0, and so on; e.g. a warm-up then a cosine:

        SequentialLR(opt, [LinearWarmup(opt, 5), CosineAnnealingLR(opt, 45)], milestones=[5])
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int]):
        if isinstance(schedulers, LRScheduler) or not isinstance(schedulers, Sequence) \
                or not schedulers:
            raise ArgumentTypeError(f"SequentialLR: schedulers must be a non-empty list of "
                                    f"schedules, got {schedulers!r}")
        for i, schedule in enumerate(schedulers):
            if not isinstance(schedule, LRScheduler) or schedule.optimizer is not optimizer:
                raise ArgumentError(f"SequentialLR: schedulers[{i}] must be a schedule of "
                                    f"the same optimizer, got {schedule!r}")
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence) \
                or len(milestones) != len(schedulers) - 1:
            raise ArgumentError(f"SequentialLR: milestones must list {len(schedulers) - 1} "
                                f"epoch(s), one per scheduler after the first; got "
                                f"{milestones!r}")
        self.milestones = [_check_count("SequentialLR", f"milestones[{i}]", m)
                           for i, m in enumerate(milestones)]
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ArgumentError(f"SequentialLR: milestones must increase, got {milestones!r}")
        self.schedulers = list(schedulers)
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        index = bisect.bisect_right(self.milestones, epoch)
        start = self.milestones[index - 1] if index else 0
        return self.schedulers[index].lr_at(epoch - start)

    def _restore(self, base_lr: float, epoch: int) -> None:
        super()._restore(base_lr, epoch)
        for schedule in self.schedulers:
            schedule.base_lr = base_lr
