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
"""

from __future__ import annotations

from collections.abc import Sequence

from dlsys.distributed.comm import DistributedError, allreduce_, broadcast_, rank, world_size
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.graph import Node
from dlsys.ops.elementwise import mul_byconst_op
from dlsys.ops.placeholder import Parameter
from dlsys.optim.base import TrainStep
from dlsys.passes.gradient import gradients
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


class DataParallel:
    """The executor of a data-parallel step: ``run(feeds)`` evaluates this rank's scaled loss
    and gradients, then sums them over the ranks (see the module docstring).

    ``params`` (Parameter nodes) are broadcast from rank 0 when it is made, so every rank
    starts from the same values whatever it initialised them to. ``extra`` nodes (such as
    the logits) are evaluated too, each rank's own, never reduced; a run returns the loss,
    the extra values and the gradients, in that order.
    """

    def __init__(self, loss: Node, params: Sequence[Parameter], ctx=None,
                 dtype: str | None = None, extra: Sequence[Node] = ()):
        if not isinstance(loss, Node):
            raise ArgumentTypeError(f"DataParallel: loss must be a graph node, got "
                                    f"{type(loss).__name__}")
        params = list(params)
        for i, param in enumerate(params):
            if not isinstance(param, Parameter):
                raise ArgumentTypeError(f"DataParallel: params[{i}] must be a Parameter, got "
                                        f"{type(param).__name__}")
        self.size = world_size()
        self.loss = loss if self.size == 1 else mul_byconst_op(loss, 1.0 / self.size)
        self.grads = gradients(self.loss, params)
        reduced = [self.loss, *self.grads]
        self.executor = Executor([self.loss, *extra, *self.grads], ctx=ctx, dtype=dtype,
                                 contiguous=reduced)
        for param in params:
            broadcast_(param.data)

    def reduce(self) -> None:
        """Sum the last run's loss and gradients over the ranks, in place: one allreduce."""
        if self.size > 1:
            allreduce_(self.executor.contiguous_buffer())

    def run(self, feed_dict: dict) -> list:
        """This rank's shard in ``feed_dict``; returns the global batch's mean loss, the
        ``extra`` values of this shard and the global batch's mean gradients (in the order of
        ``params``), as TVM tensors the next run overwrites."""
        values = self.executor.run(feed_dict)
        self.reduce()
        return values

    def undo_state_updates(self) -> None:
        """Put back the states the last run updated in place (``Executor.undo_state_updates``):
        every rank refuses a step alike, since the loss it checks is the reduced one."""
        self.executor.undo_state_updates()


class DistributedStep(TrainStep):
    """``step(feed_dict) -> float``: ``optimizer.minimize(loss)`` across the ranks of an MPI
    job. Feed each rank its shard of the global batch (``x[shard_slice(len(x))]``); every
    rank gets the global batch's mean loss, checked as ``TrainStep`` checks it (a loss that
    is not finite raises on every rank alike, before any parameter changes), and applies the
    same update. Outside a job it is a plain training step.
    """

    def __init__(self, optimizer, loss: Node):
        if getattr(optimizer, "_nodes", None) is None:
            raise ArgumentError(f"DistributedStep needs a dlsys.optim optimiser built over "
                                f"Parameter nodes, got {type(optimizer).__name__}")
        # TrainStep's own executor is not built: DataParallel takes its place, and
        # TrainStep.__call__ runs it (this rank's shard, then the allreduce).
        self.optimizer = optimizer
        self.loss = loss
        self.parallel = DataParallel(loss, optimizer._nodes, ctx=optimizer.device,
                                     dtype=optimizer.dtype)
        self.executor = self.parallel
