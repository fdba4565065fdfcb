"""Run under ``mpirun -n 2``: rank 1 raises in the middle of training while rank 0 goes on into
its next allreduce. The job must end (MPI_Abort from dlsys.distributed's excepthook) instead
of leaving rank 0 waiting; prints the time of the fault so the test can bound the rest."""

import time

import numpy as np

from dlsys import autodiff as ad
from dlsys import distributed as dist
from dlsys import optim
from dlsys.ops.placeholder import Parameter

w = Parameter(np.zeros((6, 4), np.float32), name="W")
x, y = ad.Variable("x"), ad.Variable("y")
step = dist.DistributedStep(optim.SGD([w], 0.1), ad.softmaxcrossentropy_op(ad.matmul_op(x, w), y))
images, labels = np.ones((4, 6), np.float32), np.eye(4, dtype=np.float32)
for number in range(1000):
    if number == 3 and dist.rank() == 1:
        print(f"fault at {time.time()}", flush=True)
        raise RuntimeError("injected fault on rank 1")
    step({x: images[dist.shard_slice(4)], y: labels[dist.shard_slice(4)]})
raise AssertionError("rank 0 trained on while rank 1 had failed")
