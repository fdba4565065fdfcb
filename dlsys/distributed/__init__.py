"""Data-parallel training across processes and machines, on MPI (``pip install
'dlsys[distributed]'``; run with ``mpirun -n N``).

- ``rank()``, ``world_size()``: this process's place in the job (0 and 1 outside one).
- ``allreduce_(tensor)``, ``broadcast_(tensor, root=0)``: collectives on CPU TVM tensors,
  in place, through DLPack views of their memory (no copies).
- ``DistributedStep(optimizer, loss)``: ``optimizer.minimize(loss)`` across the ranks, each
  fed its ``shard_slice`` of the global batch: a ``dlsys.optim.TrainStep`` with the
  ``AllReduce`` hook; ``DataParallel`` is that step's executor alone.

The layers: ``comm`` (MPI, imported only under a launcher), ``step`` (the data-parallel step)
and ``training`` (what ``dlsys train`` adds: the run folder on rank 0, the ranks' agreement).
"""

from dlsys.distributed.comm import (
    DistributedError,
    allreduce_,
    broadcast_,
    rank,
    world_size,
)
from dlsys.distributed.step import AllReduce, DataParallel, DistributedStep, shard_slice

__all__ = ["rank", "world_size", "allreduce_", "broadcast_", "shard_slice", "AllReduce",
           "DataParallel", "DistributedStep", "DistributedError"]
