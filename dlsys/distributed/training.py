"""What ``mpirun -n N dlsys train`` needs besides the step: rank 0's run folder shared with the
others, a check that every rank trains the same run on the same data, and each rank's shard
of every global batch.

Rank 0 alone owns the run folder (its lock, ``run.json``, checkpoints, metrics and model),
so the other ranks need no shared file system: what rank 0 read to resume is sent to them.
"""

from __future__ import annotations

import os
import zlib
from typing import Protocol

import numpy as np

from dlsys.distributed.comm import (
    DistributedError,
    gather_all,
    gather_on_machine,
    rank,
    share,
    world_size,
)
from dlsys.distributed.step import shard_slice

DATA_SPLITS = ("train", "val", "test")


class RunSettings(Protocol):
    """What the ranks compare of a run's settings (``dlsys.frontend.settings.RunSettings``,
    named by what it offers: the front end sits above this package)."""

    batch_size: int

    def to_record(self) -> dict[str, object]: ...


def _digest(split) -> int:
    """A checksum of a split's images and labels: ranks that read different files (or one
    that read a truncated copy) disagree here even when the sizes match."""
    value = zlib.crc32(np.ascontiguousarray(split.images))
    return zlib.crc32(np.ascontiguousarray(split.labels), value)


def _fingerprint(settings: RunSettings, dataset, resume: bool) -> dict:
    """What must be equal on every rank for them to train one model together: the settings
    as recorded (so that a difference reads as ``run.json`` would show it), less the data
    set's path, which may differ between machines; its contents are compared instead."""
    record = {k: v for k, v in settings.to_record().items() if k != "data"}
    return {"settings": record, "resume": resume,
            "data": {name: (len(getattr(dataset, name)), _digest(getattr(dataset, name)))
                     for name in DATA_SPLITS}}


def _differences(mine: dict, reference: dict) -> list[str]:
    """How one rank's fingerprint differs from rank 0's, for people."""
    found = []
    for key in sorted(set(mine["settings"]) | set(reference["settings"])):
        theirs, ours = mine["settings"].get(key), reference["settings"].get(key)
        if theirs != ours:
            found.append(f"{key} {theirs!r} (rank 0: {ours!r})")
    if mine["resume"] != reference["resume"]:
        found.append(f"--resume {'given' if mine['resume'] else 'not given'} (rank 0: "
                     f"{'given' if reference['resume'] else 'not given'})")
    for name in DATA_SPLITS:
        (count, digest), (count0, digest0) = mine["data"][name], reference["data"][name]
        if count != count0:
            found.append(f"{count} {name} images (rank 0: {count0})")
        elif digest != digest0:
            found.append(f"other {name} images than rank 0's (same count, other contents)")
    return found


class TrainingGroup:
    """The ranks of one ``dlsys train`` job; ``training_group()`` makes it."""

    def __init__(self) -> None:
        self.rank = rank()
        self.size = world_size()
        self.threads = _share_cores()

    def share(self, value):
        """Rank 0's ``value`` on every rank (what it read from its run folder)."""
        return share(value)

    def check_agreement(self, settings: RunSettings, dataset, resume: bool) -> None:
        """Raise on every rank, alike, unless all of them resolved the same settings and read
        the same data, and the global batch divides among them."""
        fingerprints = gather_all((_fingerprint(settings, dataset, resume), dataset.source))
        reference, source0 = fingerprints[0]
        problems = []
        for other, (mine, source) in enumerate(fingerprints):
            differences = _differences(mine, reference)
            if differences:
                where = f" from {source}" if source != source0 else ""
                problems.append(f"rank {other}{where}: " + ", ".join(differences))
        if problems:
            raise DistributedError(f"the {self.size} ranks must run the same settings on the "
                                   f"same data (rank 0 read {source0}), but "
                                   + "; ".join(problems), every_rank=True)
        shard_slice(settings.batch_size)  # raises alike on every rank if it does not divide

    def total(self, *counts: int) -> tuple[int, ...]:
        """Each of ``counts`` summed over the ranks."""
        return tuple(sum(values) for values in zip(*gather_all(counts)))

    def local_batch(self, global_batch: int) -> int:
        """The images of each global batch that one rank computes."""
        return global_batch // self.size

    def shard(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """This rank's contiguous part of each global batch (index arrays)."""
        part = shard_slice(len(batches[0])) if batches else slice(0, 0)
        return [batch[part] for batch in batches]


def _share_cores() -> int:
    """TVM threads for this rank: the pool ``dlsys.kernels`` sized for every CPU this process
    may use, divided among the ranks on this machine that may use the same CPUs (all of them
    unless the launcher bound each to its own cores), so that together they do not start
    more threads than CPUs, which would make every parallel kernel wait for a descheduled
    thread. Only ever lowered; it takes effect because no kernel has run yet (TVM creates
    its pool at the first parallel kernel)."""
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    sharing = sum(1 for theirs in gather_on_machine(mine) if theirs & mine) or 1
    try:  # dlsys.kernels has set it to a positive integer on import
        current = int(os.environ["TVM_NUM_THREADS"])
    except (KeyError, ValueError):
        current = len(mine) or 1
    threads = max(1, min(current, len(mine) // sharing if mine else current))
    os.environ["TVM_NUM_THREADS"] = str(threads)
    return threads


def training_group() -> TrainingGroup | None:
    """The job's ranks when this process is one of several MPI ranks, else None."""
    return TrainingGroup() if world_size() > 1 else None


def silent(line: str) -> None:
    """The ``log`` of ranks other than 0: only rank 0 reports a run's progress."""
