"""The MPI layer of ``dlsys.distributed``: which rank this process is, and collectives on TVM
tensors in place.

mpi4py is imported only when an MPI launcher started this process (it sets variables such as
``OMPI_COMM_WORLD_SIZE``): importing it initialises MPI, which outside ``mpirun`` costs time
and may start a daemon, and dlsys must work where mpi4py is not installed at all. Outside a
launch, this process is rank 0 of a world of 1 and every collective returns at once.

Collectives read and write the tensors' own memory through numpy views made by DLPack (no
copy), so a gradient buffer that the executor's kernels write is reduced where it lies.

Faults: once MPI runs more than one rank, an exception that nobody catches calls
``MPI_Abort`` (from ``sys.excepthook``), which ends every rank of the job; without it the
other ranks would wait in their next collective for ever.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, DlsysError

# Set by the launchers for each process they start: Open MPI, MPICH's Hydra and Slurm's PMI,
# and PMIx (Open MPI 5, srun --mpi=pmix). Their presence, not their value, decides.
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS")
LAUNCHER_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
INSTALL_HINT = "pip install 'dlsys[distributed]'"


class DistributedError(DlsysError, RuntimeError):
    """Ranks of one job that cannot work together: settings or data that differ between them,
    a global batch that does not divide among them, or MPI missing where it was launched.

    ``every_rank`` is true when every rank raises the same error at the same point (the
    ranks decided it together), so each can exit normally; any other error on one rank must
    end the others with ``abort``.
    """

    def __init__(self, message: str, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


def _launched_size() -> int | None:
    """The world size a launcher announced, 0 if it announced a launch without a size, or None
    when no launcher started this process."""
    for name in LAUNCHER_SIZE_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    if any(name in os.environ for name in LAUNCHER_RANK_VARS):
        return 0
    return None


class _World:
    """The job's communicator, found on first use (or None outside a launch)."""

    comm = None
    checked = False


def _comm():
    """MPI's world communicator when this process is one of several ranks, else None."""
    if _World.checked:
        return _World.comm
    size = _launched_size()
    comm = None
    if size is not None and size != 1:
        try:
            from mpi4py import MPI
        except ImportError:
            raise DistributedError(f"this process was started by an MPI launcher (a job of "
                                   f"{size or 'several'} ranks) but mpi4py is not installed; "
                                   f"{INSTALL_HINT}, or run without mpirun",
                                   every_rank=True) from None
        if MPI.COMM_WORLD.Get_size() > 1:
            comm = MPI.COMM_WORLD
            _install_excepthook(comm)
    _World.comm, _World.checked = comm, True
    return comm


def _install_excepthook(comm) -> None:
    """End the whole job when an exception escapes on this rank (see the module docstring)."""
    previous = sys.excepthook

    def abort_job(kind, value, traceback) -> None:
        previous(kind, value, traceback)
        status = 130 if issubclass(kind, KeyboardInterrupt) else 1
        sys.stderr.write(f"dlsys.distributed: rank {comm.Get_rank()} of {comm.Get_size()} "
                         f"failed ({kind.__name__}); aborting every rank\n")
        sys.stderr.flush()
        comm.Abort(status)

    sys.excepthook = abort_job


def rank() -> int:
    """This process's rank in the MPI job: 0 outside one."""
    comm = _comm()
    return 0 if comm is None else comm.Get_rank()


def world_size() -> int:
    """How many ranks the MPI job has: 1 outside one."""
    comm = _comm()
    return 1 if comm is None else comm.Get_size()


def launched_rank() -> int:
    """This process's rank as the launcher announced it (0 outside a launch), read without
    starting MPI."""
    value = next((os.environ[n] for n in LAUNCHER_RANK_VARS if n in os.environ), "0").strip()
    return int(value) if value.isdigit() else 0


def rank_label() -> str:
    """`` (rank R of N)`` for messages of a job of several ranks, else the empty string.

    Read from the launcher's variables, so that an error message never waits for MPI.
    """
    size = _launched_size()
    if size is None or size == 1:
        return ""
    index = next((os.environ[n] for n in LAUNCHER_RANK_VARS if n in os.environ), "?")
    return f" (rank {index} of {size or '?'})"


def abort(status: int) -> None:
    """End every rank of the job with exit status ``status`` (a rank that fails alone must,
    or the others wait in their next collective for ever); outside a job, exit."""
    comm = _comm()
    sys.stdout.flush()
    sys.stderr.flush()
    if comm is None:
        sys.exit(status)
    comm.Abort(status)


def exit_status(status: int, error: BaseException | None) -> int:
    """The status for a failing rank to exit with, after it printed its message.

    An error every rank raised alike (``DistributedError.every_rank``) lets each rank exit
    normally; any other failure, in a job of several ranks, aborts the job.
    """
    if getattr(error, "every_rank", False) or _launched_size() in (None, 1):
        return status
    abort(status)
    return status  # not reached: MPI_Abort ends this process


def _numpy_view(owner: str, tensor) -> np.ndarray:
    """``tensor``'s own memory as a writable numpy array (DLPack; nothing copied)."""
    import tvm

    if not isinstance(tensor, tvm.runtime.Tensor):
        raise ArgumentTypeError(f"{owner} takes a TVM tensor, got {type(tensor).__name__}")
    if tensor.device.dlpack_device_type() != tvm.cpu(0).dlpack_device_type():
        raise ArgumentError(f"{owner}: the tensor is on {tensor.device}; dlsys.distributed "
                            f"reduces CPU tensors (MPI reads host memory)")
    return np.from_dlpack(tensor)


def allreduce_(tensor) -> None:
    """Sum ``tensor`` over every rank, in place: afterwards each rank holds the same sum.

    Every rank must call it with a tensor of the same shape and dtype, in the same order as
    the other collectives. Outside an MPI job it leaves the tensor as it is.
    """
    array = _numpy_view("allreduce_", tensor)
    comm = _comm()
    if comm is not None:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)


def broadcast_(tensor, root: int = 0) -> None:
    """Overwrite ``tensor`` on every rank with rank ``root``'s values, in place."""
    array = _numpy_view("broadcast_", tensor)
    size = world_size()
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < size:
        raise ArgumentError(f"broadcast_: root must be a rank from 0 to {size - 1}, got "
                            f"{root!r}")
    comm = _comm()
    if comm is not None:
        comm.Bcast(array, root=root)


def share(value, root: int = 0):
    """Rank ``root``'s ``value`` (any picklable object) on every rank."""
    comm = _comm()
    return value if comm is None else comm.bcast(value, root=root)


def gather_all(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    comm = _comm()
    return [value] if comm is None else comm.allgather(value)


def gather_on_machine(value) -> list:
    """The ``value`` of every rank on this machine (those sharing its memory), on each."""
    comm = _comm()
    if comm is None:
        return [value]
    from mpi4py import MPI

    machine = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return machine.allgather(value)
    finally:
        machine.Free()
