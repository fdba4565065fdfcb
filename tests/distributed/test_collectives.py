"""dlsys.distributed's collectives and DistributedStep on two ranks (``mpirun -n 2``): the
checks run inside ``programs/collectives.py`` on every rank."""

from mpi_jobs import PROGRAMS, PYTHON, mpirun, needs_mpi

pytestmark = needs_mpi


def test_allreduce_broadcast_and_step_on_two_ranks():
    job = mpirun([*PYTHON, str(PROGRAMS / "collectives.py")], ranks_each=2)
    assert job.returncode == 0, job.stderr[-3000:]
    assert sorted(job.stdout.split("\n"))[-2:] == ["rank 0: ok", "rank 1: ok"]
