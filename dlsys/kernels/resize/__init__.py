"""Resampling an image along its trailing axes (ONNX's Resize: nearest and linear) and its
adjoint (``compute``); the forward runs with the shared injective schedule, the adjoint
with its own (``schedule``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.resize import compute, grid_sample
from dlsys.kernels.resize.schedule import schedule_resize_gradient

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"resize_gradient": schedule_resize_gradient}


def register(kinds: Registrar) -> None:
    kinds.add("resize", compute.resize, "injective")
    kinds.add("resize_gradient", compute.resize_gradient, "resize_gradient")
    kinds.add("grid_sample", grid_sample.grid_sample, "injective")
    kinds.add("grid_sample_input_gradient", grid_sample.grid_sample_input_gradient,
              "as_written")
    kinds.add("grid_sample_grid_gradient", grid_sample.grid_sample_grid_gradient,
              "as_written")
