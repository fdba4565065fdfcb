"""The optimisers' fused updates (SGD with momentum and weight decay, Adam and AdamW) over
every parameter in one kernel, run with the shared injective schedule; and the same updates
with gradient clipping by global norm (PyTorch's ``clip_grad_norm_``) in that one kernel,
whose sums of squares ``schedule.schedule_clipped_update`` schedules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.optim import compute
from dlsys.kernels.optim.compute import ADAM_HYPER, CLIP_EPS, SGD_HYPER
from dlsys.kernels.optim.schedule import schedule_clipped_update

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

__all__ = ["ADAM_HYPER", "CLIP_EPS", "SGD_HYPER", "register"]

SCHEDULES = {"clipped_update": schedule_clipped_update}


def register(kinds: Registrar) -> None:
    kinds.add("sgd_update", compute.sgd_update, "injective")
    kinds.add("adam_update", compute.adam_update, "injective")
    kinds.add("sgd_update_clipped", compute.sgd_update_clipped, "clipped_update")
    kinds.add("adam_update_clipped", compute.adam_update_clipped, "clipped_update")
