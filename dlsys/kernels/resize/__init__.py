"""Resampling an image along its trailing axes (ONNX's Resize: nearest and linear) and its
adjoint (``compute``); the forward runs with the shared injective schedule, the adjoint
with its own (``schedule``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.resize import compute
from dlsys.kernels.resize.schedule import schedule_resize_gradient

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"resize_gradient": schedule_resize_gradient}


def register(kinds: Registrar) -> None:
    kinds.add("resize", compute.resize, "injective")
    kinds.add("resize_gradient", compute.resize_gradient, "resize_gradient")
