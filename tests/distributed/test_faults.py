"""Faults and bad input in an MPI job: every rank ends, non-zero, soon after one fails, with
a message naming the failed rank; ranks that cannot train together say why on every rank."""

import re
import time

from mpi_jobs import DLSYS, PROGRAMS, PYTHON, assert_params_close, mpirun, needs_mpi

from dlsys.frontend.checkpoint import load_checkpoint
from dlsys.frontend.trainer import TrainConfig, run_training
from dlsys.testing.synthetic import write_idx_dataset

pytestmark = needs_mpi

# From the fault to the end of the job: MPI_Abort or the launcher's kill takes well under a
# second; a rank left waiting in a collective would take until the launch timeout.
ENDS_WITHIN_S = 30


def seconds_since_fault(job) -> float:
    fault = float(re.search(r"fault at ([0-9.]+)", job.stdout).group(1))
    return time.time() - fault


def test_a_rank_that_raises_ends_every_rank():
    job = mpirun([*PYTHON, str(PROGRAMS / "raise_on_rank.py")], ranks_each=2)
    assert job.returncode != 0
    assert seconds_since_fault(job) < ENDS_WITHIN_S
    assert "rank 1 of 2 failed (RuntimeError); aborting every rank" in job.stderr
    assert "injected fault on rank 1" in job.stderr
    assert "trained on" not in job.stderr


def test_a_killed_rank_ends_the_job_and_resume_loses_nothing(data_dir, tmp_path):
    out = tmp_path / "run"
    job = mpirun([*PYTHON, str(PROGRAMS / "killed_run.py"), str(data_dir), str(out)],
                 ranks_each=2)
    assert job.returncode != 0
    assert seconds_since_fault(job) < ENDS_WITHIN_S
    assert re.search(r"rank 1 with PID \d+ .*\n?.*signal 9", job.stderr), job.stderr[-2000:]
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    # Resumed by one process (any number of ranks may resume): as if never interrupted.
    resumed = run_training(TrainConfig(out=out, data=str(data_dir), resume=True,
                                       progress=False), log=lambda line: None)
    straight = run_training(TrainConfig(out=tmp_path / "straight", data=str(data_dir),
                                        model="mlp", hidden=(16,), epochs=2, batch_size=60,
                                        val_size=0, progress=False), log=lambda line: None)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert_params_close(resumed.params, straight.params)


def test_a_rank_failing_alone_in_dlsys_train_aborts_the_job(data_dir, tmp_path):
    flags = ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "60"]
    job = mpirun([*DLSYS, *flags, "--data", str(data_dir)],
                 [*DLSYS, *flags, "--data", str(tmp_path / "missing")])
    assert job.returncode == 2
    assert re.search(r"dlsys \(rank 1 of 2\): error: .*missing.*", job.stderr)


def test_a_global_batch_that_does_not_divide_is_named_on_every_rank(data_dir, tmp_path):
    job = mpirun([*DLSYS, "train", "--data", str(data_dir), "--out", str(tmp_path / "run"),
                  "--batch-size", "61"], ranks_each=2)
    assert job.returncode == 2
    for rank in (0, 1):
        assert (f"dlsys (rank {rank} of 2): error: the global batch of 61 does not divide "
                f"among the 2 ranks; use a multiple of 2, such as 60 or 62") in job.stderr
    assert "MPI_ABORT" not in job.stderr  # decided together: each rank exits by itself
    assert not (tmp_path / "run" / "run.json").exists()


def test_ranks_that_disagree_on_settings_or_data_are_named(data_dir, tmp_path):
    other = write_idx_dataset(tmp_path / "other", num_train=300, num_test=60, seed=5)
    flags = ["train", "--out", str(tmp_path / "run"), "--batch-size", "60", "--hidden", "16"]
    job = mpirun([*DLSYS, *flags, "--data", str(data_dir)],
                 [*DLSYS, *flags, "--data", str(other), "--lr", "0.1"])
    assert job.returncode == 2
    for rank in (0, 1):
        line = next(line for line in job.stderr.splitlines()
                    if line.startswith(f"dlsys (rank {rank} of 2): error:"))
        assert f"the 2 ranks must run the same settings on the same data (rank 0 read " \
               f"{data_dir})" in line
        assert f"rank 1 from {other}: lr 0.1 (rank 0: 0.2)" in line
        assert "other train images than rank 0's" in line
        assert "other test images than rank 0's" in line
    assert not (tmp_path / "run" / "run.json").exists()
