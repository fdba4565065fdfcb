"""Run under ``mpirun -n 2`` as ``killed_run.py DATA OUT``: ``dlsys train``'s run_training for
two epochs, where rank 1 kills itself (SIGKILL, no clean-up) in the middle of epoch 2. The
job must end; rank 0's checkpoint of epoch 1 must survive intact for ``--resume``."""

import os
import signal
import sys
import time

from dlsys import distributed as dist
from dlsys.frontend import trainer
from dlsys.frontend.trainer import TrainConfig, run_training

data, out = sys.argv[1:3]
steps = 0
plain_step = trainer.Trainer.train_step


def dying_step(self, images, labels):
    global steps
    steps += 1
    if steps == 8 and dist.rank() == 1:  # epoch 1 has 5 batches: this is in epoch 2
        print(f"fault at {time.time()}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return plain_step(self, images, labels)


trainer.Trainer.train_step = dying_step
run_training(TrainConfig(out=out, data=data, model="mlp", hidden=(16,), epochs=2,
                         batch_size=60, val_size=0, progress=False))
raise AssertionError("the run ended although rank 1 was killed")
