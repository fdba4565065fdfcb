"""The data-parallel example of docs/distributed.md, run as it says: ``mpirun -n 2 python
train.py``."""

from __future__ import annotations

import re
from pathlib import Path

from mpi_jobs import PYTHON, mpirun, needs_mpi

from dlsys.testing.synthetic import write_idx_dataset

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


@needs_mpi
def test_distributed_example_trains_on_two_ranks(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    (example,) = [block for block in blocks if "DistributedStep" in block]
    (tmp_path / "train.py").write_text(example)
    data = write_idx_dataset(tmp_path / "data", num_train=2400, num_test=100)
    losses = []
    for _ in range(2):   # the example seeds its initialisation: a second run agrees
        job = mpirun([*PYTHON, "train.py"], ranks_each=2, cwd=tmp_path,
                     env={"DLSYS_DATA": str(data)})
        assert job.returncode == 0, job.stderr[-3000:]
        # Rank 0 alone prints and saves.
        printed = re.findall(r"global loss (\d+\.\d{3}) over 2 rank\(s\)", job.stdout)
        assert len(printed) == 1, job.stdout
        losses.append(printed[0])
        assert (tmp_path / "mlp.npz").exists()
    assert losses[0] == losses[1]
