"""Gathers by integer ids (an embedding's lookup) and their scatter-add adjoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.gather import compute

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar


def _as_written(sch) -> None:
    """The scatter-add writes its own loops (parallel column chunks, vector columns): an
    extern block, which no schedule primitive can split."""


SCHEDULES = {"as_written": _as_written}


def register(kinds: Registrar) -> None:
    kinds.add("embedding", compute.embedding, "injective")
    kinds.add("embedding_gradient", compute.embedding_gradient, "as_written")
