"""The one training step: ``optimizer.minimize(loss)``, ``dlsys train``'s trainer and
data-parallel training (``dlsys.distributed.DistributedStep``) all run a ``TrainStep``.

A step is the forward and backward pass (one planned executor for the loss, any ``extra``
outputs and every gradient), then a ``GradientReduce`` hook (nothing in one process, the
allreduce of the loss and gradients across the ranks of an MPI job), then a check of the
loss, then the optimiser's fused update. A loss the check refuses raises before the update
and after the executor has put back the states the forward pass updated in place, so a
refused step changes no state at all.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError, TrainingError
from dlsys.graph import Node
from dlsys.ops.placeholder import Parameter
from dlsys.passes.gradient import gradients
from dlsys.runtime.executor import Executor

DLPACK_CPU = 1  # DLPack's device type of the CPU (kDLCPU)

# Why the refused step is harmless, appended to every refusal's reason.
UNCHANGED = "the step changed nothing (parameters, optimiser state, running statistics)"


def check_max_grad_norm(owner: str, value) -> float | None:
    """None (no clipping) or a positive number, ``math.inf`` included (PyTorch's idiom for
    measuring the norm without clipping), as a float."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{owner}: max_grad_norm must be a positive number or None, "
                                f"got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float, such as 10**400
        number = math.inf
    if not number > 0:  # also NaN
        raise ArgumentError(f"{owner}: max_grad_norm must be positive (math.inf measures the "
                            f"norm without clipping), got {value!r}")
    return number


class StepRefused(TrainingError):
    """A loss the step refused (not finite, or diverged); ``reason`` says why in a few words
    (``"loss became nan"``), for callers that add where it happened (an epoch, a batch)."""

    def __init__(self, reason: str, node: str | None = None):
        where = f" (loss node {node})" if node else ""
        super().__init__(f"{reason}{where}; {UNCHANGED}")
        self.reason = reason


class Updater(Protocol):
    """What a step needs of its optimiser (``dlsys.optim.Optimizer``, which imports this
    module: naming the protocol instead keeps the imports one-way)."""

    device: Any
    dtype: str
    _nodes: list[Parameter] | None  # the Parameter nodes it updates (None: tensors only)

    def step(self, grads: Sequence, max_grad_norm: float | None = None) -> None:
        """Apply one update with ``grads``, in the order of the parameters, clipped by their
        global norm to ``max_grad_norm`` when given."""

    @property
    def last_grad_norm(self) -> float | None:
        """The gradients' global norm before clipping at the last (clipped) update."""

    # Optional: an updater whose unclipped update is one kernel call offers it as
    # ``fused_update() -> (function, arguments, key) | None`` (the arguments bound by its
    # last ``step``), and ``count_fused_update()``, called after a step whose executor
    # made that call (``Executor.attach_update``).


class GradientReduce:
    """What happens between the backward run and the update. This base does nothing: the
    step of one process. A subclass (``dlsys.distributed``'s allreduce) may rewrite the loss
    before it is differentiated, ask for the loss and gradients side by side in one buffer
    (``contiguous``) and combine them in place after each run."""

    # Whether the executor places the loss and every gradient in one buffer
    # (``Executor.contiguous_buffer()``), so that one collective call covers them all.
    contiguous: bool = False

    def prepare(self, loss: Node, params: Sequence[Parameter]) -> Node:
        """Called once, before the graph is differentiated: the loss to differentiate."""
        return loss

    def reduce(self, executor: Executor) -> None:
        """Called after each run, before the loss is read: combine its outputs in place."""


def step_executor(loss: Node, params: Sequence[Parameter], extra: Sequence[Node] = (),
                  reduce: GradientReduce | None = None, ctx=None,
                  dtype: str | None = None, memory_budget: int | None = None,
                  reserved_bytes: int = 0) -> Executor:
    """The executor of a training step: its outputs are the loss to report (``reduce``'s
    rewrite of ``loss``), the ``extra`` nodes and the gradients, in the order of ``params``;
    planned within ``memory_budget`` bytes (``reserved_bytes`` of which the optimiser holds)
    when one is given."""
    if reduce is not None:
        loss = reduce.prepare(loss, params)
    grads = gradients(loss, list(params))
    contiguous = [loss, *grads] if reduce is not None and reduce.contiguous else None
    return Executor([loss, *extra, *grads], ctx=ctx, dtype=dtype, contiguous=contiguous,
                    memory_budget=memory_budget, reserved_bytes=reserved_bytes)


class TrainStep:
    """``step(feed_dict) -> float``: forward, backward, ``reduce``, a check of the loss and
    one update of ``optimizer`` (built over Parameter nodes); see ``Optimizer.minimize``.

    ``extra`` nodes (such as the logits) are evaluated too and returned by ``run``, never
    reduced. ``divergence_factor``: refuse a loss that many times the first accepted one
    (a mean cross-entropy only falls while training works); ``None`` checks finiteness only.
    ``max_grad_norm``: clip the (reduced) gradients by their global L2 norm inside the
    update kernel, as ``torch.nn.utils.clip_grad_norm_``; ``last_grad_norm`` is then the
    norm before clipping. It may be changed between steps (it compiles nothing).
    ``memory_budget``: the bytes the step may hold, the optimiser's state included (see
    ``Optimizer.minimize``).
    """

    def __init__(self, optimizer: Updater, loss: Node, extra: Sequence[Node] = (),
                 reduce: GradientReduce | None = None,
                 divergence_factor: float | None = None,
                 max_grad_norm: float | None = None, memory_budget: int | None = None):
        # What a step reads at every call is kept computed (``_fusable``, ``_loss_limit``):
        # the setters below keep it right.
        self._reduce = reduce
        self._divergence_factor = divergence_factor
        self._first_loss: float | None = None
        self.max_grad_norm = max_grad_norm
        self.optimizer = optimizer
        self.loss = loss
        self._set_loss_limit()
        # The optimiser's state is held beside the program: a budget counts it too.
        reserved = getattr(optimizer, "state_bytes", 0) if memory_budget is not None else 0
        self.executor = step_executor(loss, optimizer._nodes, extra, reduce,
                                      ctx=optimizer.device, dtype=optimizer.dtype,
                                      memory_budget=memory_budget, reserved_bytes=reserved)
        self._outputs = 1 + len(extra)
        self._updated = False  # whether the last call updated (else it has no norm)
        self._values: list = []  # what the last call's run returned
        # The loss buffer the last run returned and a numpy view of it (``_read_loss``).
        self._loss_tensor = None
        self._loss_view = None

    @property
    def max_grad_norm(self) -> float | None:
        """The clipping limit of the gradients' global norm, or None (no clipping)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        self._max_grad_norm = check_max_grad_norm("TrainStep", value)
        # The update may follow the run in the executor's native call: nothing between
        # them (a reduction) and no clipping.
        self._fusable = self._reduce is None and self._max_grad_norm is None

    @property
    def reduce(self) -> GradientReduce | None:
        """What is done between the run and the update (an allreduce), fixed at creation."""
        return self._reduce

    @property
    def divergence_factor(self) -> float | None:
        """Refuse a loss this many times the first accepted one; None checks finiteness."""
        return self._divergence_factor

    @divergence_factor.setter
    def divergence_factor(self, value: float | None) -> None:
        self._divergence_factor = value
        self._set_loss_limit()

    @property
    def first_loss(self) -> float | None:
        """The yardstick of the divergence check: the first loss a step accepted (None
        until then; setting None makes the next accepted loss the yardstick)."""
        return self._first_loss

    @first_loss.setter
    def first_loss(self, value: float | None) -> None:
        self._first_loss = value
        self._set_loss_limit()

    @property
    def last_grad_norm(self) -> float | None:
        """The global L2 norm of every gradient before clipping, at the last call, as
        ``torch.nn.utils.clip_grad_norm_`` returns it; None without ``max_grad_norm`` or
        when the last call was refused. The update kernel computed it: reading it copies
        one number."""
        return self.optimizer.last_grad_norm if self._updated else None

    def __call__(self, feed_dict: dict) -> float:
        """Run one training step on ``feed_dict``; returns the loss before the update.

        A loss that is not of shape (1,), or not finite, raises and the step changes no
        state at all: not the parameters, the optimiser's moments and step count, batch
        norm's running statistics nor the dropout seeds (a retry of the batch draws the same
        masks).
        """
        # A step of a small model is a few microseconds of Python around its kernels, made
        # with the caches cold after them: this reads few objects and calls few functions.
        self._updated = False
        executor = self.executor
        # Without a reduction or clipping, the update is made inside the executor's run,
        # after the same check of the loss as below (``_loss_limit``): one crossing into native
        # code per step. The attached call stays right while the plan does (the plan's own
        # gradient buffers, the optimiser's tensors, updated in place).
        limit = self._loss_limit  # fixed for this step: the first loss changes only after it
        may_fuse = self._fusable
        repeat = executor.repeated_run  # the executor's common case, called directly
        values = None if repeat is None or not may_fuse else repeat(feed_dict, limit)
        if values is None:
            if may_fuse:
                executor.arm_update(limit)  # a plan without an update attached makes none
            values = executor.run(feed_dict)
        fused = executor.update_was_armed  # not where the run made a plan of new shapes
        if self._reduce is not None:
            self._reduce.reduce(executor)
        loss = values[0]
        # The same buffer as the last run: its shape was checked then; a memoryview's
        # element is a Python float, where numpy's would be a scalar to convert.
        value = self._loss_view[0] if loss is self._loss_tensor else self._read_loss(loss)
        if not (math.isfinite(value) and value <= limit):
            # The forward pass already updated the running statistics and seeds in place
            # (the update itself was not made: its guard is this same check).
            executor.undo_state_updates()
            # The reason alone stays for callers that add where it happened (the trainer's
            # epoch and batch); the message names the loss node, as every dlsys error names
            # what it is about.
            raise StepRefused(self._refusal(value, limit), node=self.loss.name)
        if self._first_loss is None:  # a refused first batch must not become the yardstick
            self.first_loss = value
        optimizer = self.optimizer
        if fused:
            optimizer.count_fused_update()  # the executor's run made the update
        elif self._max_grad_norm is None:  # an Updater that never clips takes no such argument
            optimizer.step(values[self._outputs:])
            update = self._fusable_update()
            if update is not None:
                executor.attach_update(*update)  # made by the executor from the next run on
        else:
            optimizer.step(values[self._outputs:], max_grad_norm=self._max_grad_norm)
        self._values = values
        self._updated = True
        return value

    def run(self, feed_dict: dict) -> tuple[float, list]:
        """``__call__``, also returning the ``extra`` values (TVM tensors the next run
        overwrites)."""
        value = self(feed_dict)
        return value, self._values[1:self._outputs]

    def _read_loss(self, loss) -> float:
        """The loss a run returned, checked to be a scalar; a view of its buffer is kept for
        the next runs, which return the same buffer."""
        self._loss_tensor = None
        if tuple(loss.shape) != (1,):
            self.executor.undo_state_updates()
            raise ShapeError(f"minimize: the loss {self.loss.name} has shape "
                             f"{tuple(loss.shape)}; it must be a scalar of shape (1,), such "
                             f"as a mean")
        if loss.device.dlpack_device_type() != DLPACK_CPU:
            return float(loss.numpy()[0])
        # Through numpy's DLPack view on the CPU: TVM's numpy() costs 6 us more.
        self._loss_tensor, self._loss_view = loss, np.from_dlpack(loss).data
        return self._loss_view[0]

    def _fusable_update(self) -> tuple | None:
        """The optimiser's update as one kernel call ``(function, arguments, key)`` that the
        executor may make itself, or None: with a reduction between the run and the update,
        with clipping, or for an updater that cannot say (``Updater.fused_update``)."""
        if not self._fusable:
            return None
        fused_update = getattr(self.optimizer, "fused_update", None)
        return fused_update() if fused_update is not None else None

    def _set_loss_limit(self) -> None:
        """Keep ``_loss_limit``, the largest loss a step accepts (finite besides):
        ``_refusal`` as a bound."""
        first, factor = self._first_loss, self._divergence_factor
        self._loss_limit = math.inf if factor is None or first is None else (
            factor * max(first, 1e-3))

    def _refusal(self, value: float, limit: float) -> str | None:
        """Why a step with this loss must not update anything (``limit``: ``_loss_limit``), or
        None."""
        if not math.isfinite(value):
            return f"loss became {value}"
        if value > limit:
            return (f"loss exploded to {value:.4g} (the first batch's was "
                    f"{self.first_loss:.4g})")
        return None
