"""dlsys.distributed outside an MPI job (no mpirun, no mpi4py needed): rank 0 of a world of 1,
collectives that leave tensors as they are, DistributedStep a plain training step, and the
error a launch without mpi4py gets."""

import sys

import numpy as np
import pytest
import tvm

from dlsys import autodiff as ad
from dlsys import distributed as dist
from dlsys import optim
from dlsys.distributed import comm
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.ops.placeholder import Parameter


@pytest.fixture
def world(monkeypatch):
    """A fresh look at the environment: no launcher variables unless a test sets them."""
    for name in comm.LAUNCHER_SIZE_VARS + comm.LAUNCHER_RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(comm._World, "checked", False)
    monkeypatch.setattr(comm._World, "comm", None)
    return monkeypatch


def test_outside_a_job_this_is_rank_0_of_1(world):
    world.setitem(sys.modules, "mpi4py", None)  # never imported outside a launch
    assert (dist.rank(), dist.world_size()) == (0, 1)
    assert comm.rank_label() == ""
    assert comm.launched_rank() == 0
    assert dist.shard_slice(7) == slice(0, 7)
    error = TypeError("a bug")
    assert comm.exit_status(2, error) == 2  # nothing to abort


def test_a_launch_of_one_rank_needs_no_mpi4py(world):
    world.setenv("OMPI_COMM_WORLD_SIZE", "1")
    world.setitem(sys.modules, "mpi4py", None)
    assert dist.world_size() == 1


def test_a_launch_without_mpi4py_is_named(world):
    world.setenv("OMPI_COMM_WORLD_SIZE", "2")
    world.setenv("OMPI_COMM_WORLD_RANK", "1")
    world.setitem(sys.modules, "mpi4py", None)
    assert comm.rank_label() == " (rank 1 of 2)"
    assert comm.launched_rank() == 1  # read without starting MPI
    with pytest.raises(dist.DistributedError, match=r"2 ranks.*mpi4py is not installed.*pip "
                                                    r"install 'dlsys\[distributed\]'") as caught:
        dist.world_size()
    # Every rank of such a launch fails alike, so each exits instead of aborting the job.
    assert caught.value.every_rank
    assert comm.exit_status(2, caught.value) == 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_collectives_alone_leave_the_tensor_as_it_is(world, dtype):
    values = np.arange(6, dtype=dtype).reshape(2, 3)
    tensor = tvm.runtime.tensor(values)
    dist.allreduce_(tensor)
    dist.broadcast_(tensor, root=0)
    np.testing.assert_array_equal(tensor.numpy(), values)


def test_collectives_refuse_what_they_cannot_reduce(world):
    with pytest.raises(ArgumentTypeError, match="allreduce_ takes a TVM tensor, got ndarray"):
        dist.allreduce_(np.zeros(3))
    with pytest.raises(ArgumentError, match="root must be a rank from 0 to 0, got 1"):
        dist.broadcast_(tvm.runtime.tensor(np.zeros(3, np.float32)), root=1)
    with pytest.raises(ArgumentError, match="root must be a rank from 0 to 0, got True"):
        dist.broadcast_(tvm.runtime.tensor(np.zeros(3, np.float32)), root=True)


def _linear(seed=0):
    rng = np.random.default_rng(seed)
    w = Parameter(rng.standard_normal((5, 3)).astype(np.float32) * 0.3, name="W")
    x, y = ad.Variable("x"), ad.Variable("y")
    return ad.softmaxcrossentropy_op(ad.matmul_op(x, w), y), x, y, [w]


def test_distributed_step_alone_is_a_training_step(world):
    loss, x, y, params = _linear()
    step = dist.DistributedStep(optim.Adam(params, lr=0.05), loss)
    ref_loss, ref_x, ref_y, ref_params = _linear()
    ref_step = optim.Adam(ref_params, lr=0.05).minimize(ref_loss)
    rng = np.random.default_rng(1)
    for _ in range(4):
        images = rng.standard_normal((8, 5)).astype(np.float32)
        labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
        assert step({x: images, y: labels}) == ref_step({ref_x: images, ref_y: labels})
    np.testing.assert_array_equal(params[0].data.numpy(), ref_params[0].data.numpy())
    # The loss and the gradient lie side by side in the one buffer a job would reduce.
    assert step.parallel.executor.contiguous_buffer().shape[0] >= 1 + 5 * 3


def test_distributed_step_refuses_an_optimiser_over_tensors(world):
    loss, _, _, params = _linear()
    with pytest.raises(ArgumentError, match="DistributedStep needs a dlsys.optim optimiser "
                                            "built over Parameter nodes"):
        dist.DistributedStep(optim.SGD([params[0].data], 0.1), loss)
