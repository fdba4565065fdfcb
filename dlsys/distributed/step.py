"""The data-parallel training step: every rank runs the same graph on its shard of the global
batch, and one allreduce per step turns the ranks' gradients into the global batch's.

Each rank's loss is the mean over its shard, a ``size``-th of the global batch. The graph
scales it by ``1/size`` before differentiating, so the *sum* over the ranks of the scaled
losses and of their gradients is the global batch's mean loss and mean gradients: the scale
is one constant folded into the backward pass's kernels, nothing runs on the host.

The executor places the scaled loss and every gradient side by side in one buffer (its
``contiguous`` group), so one ``MPI_Allreduce`` over that buffer sums them all, with no
packing copies; the optimiser then reads the gradients where the allreduce left them, and
every rank applies the same update.

None of this is a step of its own: ``AllReduce`` is the ``GradientReduce`` hook that
``dlsys.optim.TrainStep`` runs between the backward pass and the update, and
``DistributedStep`` is a ``TrainStep`` with that hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlsys.distributed.comm import DistributedError, allreduce_, broadcast_, rank, world_size
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.graph import Node
from dlsys.ops.elementwise import mul_byconst_op
from dlsys.ops.placeholder import Parameter
from dlsys.optim.step import GradientReduce, TrainStep, step_executor
from dlsys.runtime.executor import Executor


def shard_slice(global_batch: int) -> slice:
    """The rows of a global batch of ``global_batch`` that this rank takes: the ``rank``-th of
    ``world_size`` equal, contiguous parts. Every rank raises alike when they do not divide."""
    size = world_size()
    if global_batch % size:
        lower = global_batch - global_batch % size
        fits = f"{lower} or {lower + size}" if lower else f"{size} or a multiple of it"
        raise DistributedError(f"the global batch of {global_batch} does not divide among the "
                               f"{size} ranks; use a multiple of {size}, such as {fits}",
                               every_rank=True)
    share = global_batch // size
    return slice(rank() * share, (rank() + 1) * share)


class AllReduce(GradientReduce):
    """The data-parallel hook of a ``TrainStep``: broadcasts the parameters from rank 0 when
    the step is built (every rank starts from the same values, whatever it initialised them
    to), differentiates the loss scaled by ``1/size``, and after each run sums the scaled
    loss and gradients over the ranks with one allreduce of their contiguous buffer."""

    contiguous = True

    def __init__(self) -> None:
        self.size = world_size()

    def prepare(self, loss: Node, params: Sequence[Parameter]) -> Node:
        """Broadcast ``params`` from rank 0; the loss every rank differentiates."""
        for param in params:
            broadcast_(param.data)
        return loss if self.size == 1 else mul_byconst_op(loss, 1.0 / self.size)

    def reduce(self, executor: Executor) -> None:
        """Sum the last run's loss and gradients over the ranks, in place."""
        if self.size > 1:
            allreduce_(executor.contiguous_buffer())


def _check_params(owner: str, params: Sequence) -> list[Parameter]:
    params = list(params)
    for i, param in enumerate(params):
        if not isinstance(param, Parameter):
            raise ArgumentTypeError(f"{owner}: params[{i}] must be a Parameter, got "
                                    f"{type(param).__name__}")
    return params


class DataParallel:
    """A data-parallel step's executor without an optimiser, for code that times or drives
    the phases itself (``benchmarks/bench_distributed.py``): the executor ``TrainStep``
    builds with the ``AllReduce`` hook, and that hook.

    ``run(feeds)`` evaluates this rank's scaled loss, the ``extra`` nodes (each rank's own,
    never reduced) and the gradients, then sums the loss and gradients over the ranks.
    """

    def __init__(self, loss: Node, params: Sequence[Parameter], ctx: Any = None,
                 dtype: str | None = None, extra: Sequence[Node] = ()):
        if not isinstance(loss, Node):
            raise ArgumentTypeError(f"DataParallel: loss must be a graph node, got "
                                    f"{type(loss).__name__}")
        self.hook = AllReduce()
        self.size = self.hook.size
        self.executor = step_executor(loss, _check_params("DataParallel", params), extra,
                                      self.hook, ctx=ctx, dtype=dtype)

    def reduce(self) -> None:
        """Sum the last run's loss and gradients over the ranks, in place: one allreduce."""
        self.hook.reduce(self.executor)

    def run(self, feed_dict: dict) -> list:
        """This rank's shard in ``feed_dict``; returns the global batch's mean loss, the
        ``extra`` values of this shard and the global batch's mean gradients (in the order of
        ``params``), as TVM tensors the next run overwrites."""
        values = self.executor.run(feed_dict)
        self.reduce()
        return values

    def undo_state_updates(self) -> None:
        """Put back the states the last run updated in place (``Executor.undo_state_updates``)."""
        self.executor.undo_state_updates()


class DistributedStep(TrainStep):
    """``step(feed_dict) -> float``: ``optimizer.minimize(loss)`` across the ranks of an MPI
    job, a ``TrainStep`` with the ``AllReduce`` hook and nothing else. Feed each rank its
    shard of the global batch (``x[shard_slice(len(x))]``); every rank gets the global
    batch's mean loss, checked as ``TrainStep`` checks it (a loss that is not finite raises
    on every rank alike, since each checks the reduced loss, before any state changes), and
    applies the same update. Outside a job it is a plain training step.

    ``max_grad_norm`` clips as ``TrainStep`` does: the update kernel reads the gradients
    where the allreduce left them, so the norm is the global batch's gradient's, the same
    number on every rank, and every rank applies the same clipped update.
    """

    def __init__(self, optimizer: Any, loss: Node, max_grad_norm: float | None = None):
        if getattr(optimizer, "_nodes", None) is None:
            raise ArgumentError(f"DistributedStep needs a dlsys.optim optimiser built over "
                                f"Parameter nodes, got {type(optimizer).__name__}")
        super().__init__(optimizer, loss, reduce=AllReduce(), max_grad_norm=max_grad_norm)

    @property
    def parallel(self) -> DistributedStep:
        """The step itself: it holds the executor (``step.parallel.executor``) that
        ``DataParallel`` held when that class was the step's executor."""
        return self
