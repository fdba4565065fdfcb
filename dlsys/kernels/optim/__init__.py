"""The optimisers' fused updates (SGD with momentum and weight decay, Adam and AdamW) over
every parameter in one kernel: compute only, run with the shared injective schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.optim import compute
from dlsys.kernels.optim.compute import ADAM_HYPER, SGD_HYPER

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

__all__ = ["ADAM_HYPER", "SGD_HYPER", "register"]

SCHEDULES: dict = {}


def register(kinds: Registrar) -> None:
    kinds.add("sgd_update", compute.sgd_update, "injective")
    kinds.add("adam_update", compute.adam_update, "injective")
