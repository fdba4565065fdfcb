"""Random kernels (dropout's mask from a counter-based hash, the seed's advance): compute
only, run with the shared injective schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.random import compute
from dlsys.kernels.random.compute import SEED_PERIOD

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

__all__ = ["SEED_PERIOD", "register"]

SCHEDULES: dict = {}


def register(kinds: Registrar) -> None:
    kinds.add("dropout", compute.dropout, "injective")
    kinds.add("next_seed", compute.next_seed, "injective")
