"""Gathers by integer ids (an embedding's lookup, a take of indices fixed by the graph) and
their scatter-add adjoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.gather import compute

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

# The scatter-add writes its own loops (parallel column chunks, vector columns): the
# shared "as_written" schedule leaves them so.
SCHEDULES: dict = {}


def register(kinds: Registrar) -> None:
    kinds.add("embedding", compute.embedding, "injective")
    kinds.add("embedding_gradient", compute.embedding_gradient, "as_written")
    kinds.add("take", compute.take, "injective")
    kinds.add("take_gradient", compute.take_gradient, "injective")
    kinds.add("as_float", compute.as_float, "injective")
