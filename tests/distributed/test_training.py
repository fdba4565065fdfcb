"""``mpirun -n 2 dlsys train``: the same parameters as one process with the same seed and
global batch, only rank 0 writing, and ``--resume`` of a one-process run by two ranks."""

import re

import numpy as np
from mpi_jobs import DLSYS, assert_params_close, mpirun, needs_mpi

from dlsys.frontend.trainer import TrainConfig, run_training
from dlsys.kernels import available_cpus

pytestmark = needs_mpi

FLAGS = {"model": "mlp", "hidden": (16,), "batch_size": 60, "optimizer": "momentum",
         "lr": 0.05, "val_size": 60}


def one_process(out, data_dir, epochs, resume=False):
    config = TrainConfig(out=out, data=str(data_dir), epochs=epochs, resume=resume,
                         progress=False, **({} if resume else FLAGS))
    return run_training(config, log=lambda line: None).params


def cli_flags(out, data_dir, epochs):
    return ["train", "--data", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            "--model", "mlp", "--hidden", "16", "--batch-size", "60", "--optimizer",
            "momentum", "--lr", "0.05", "--val-size", "60"]


def test_two_ranks_train_the_parameters_of_one_process(data_dir, tmp_path):
    want = one_process(tmp_path / "one", data_dir, epochs=1)
    job = mpirun([*DLSYS, *cli_flags(tmp_path / "two", data_dir, epochs=1)], ranks_each=2,
                 threads=None)
    assert job.returncode == 0, job.stderr[-3000:]
    # Rank 0 alone reports and writes (the other rank's lines would double these).
    assert job.stdout.count("epoch 1/1") == 1
    shape = re.search(r"data-parallel over 2 MPI ranks, 30 images of each batch and (\d+) TVM "
                      r"thread\(s\) per rank", job.stdout)
    # The two ranks share this machine's CPUs rather than each taking all of them.
    assert shape and 2 * int(shape.group(1)) <= max(2, available_cpus()), job.stdout
    assert job.stdout.count("test acc") == 1
    assert_params_close(dict(np.load(tmp_path / "two" / "params.npz")), want)


def test_two_ranks_resume_a_one_process_run(data_dir, tmp_path):
    want = one_process(tmp_path / "straight", data_dir, epochs=2)
    one_process(tmp_path / "run", data_dir, epochs=1)
    job = mpirun([*DLSYS, "train", "--out", str(tmp_path / "run"), "--data", str(data_dir),
                  "--resume", "--epochs", "2"], ranks_each=2)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "resuming from" in job.stdout and job.stdout.count("epoch 2/2") == 1
    assert_params_close(dict(np.load(tmp_path / "run" / "params.npz")), want)
