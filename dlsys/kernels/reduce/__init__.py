"""Sums and means over any axes, and their adjoints: float32 blocks added into float64
totals (``compute``), vectorised and shared between cores (``schedule``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.reduce import compute
from dlsys.kernels.reduce.schedule import schedule_reduce_sum

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"reduce_sum": schedule_reduce_sum}


def register(kinds: Registrar) -> None:
    kinds.add("reduce_sum_to", compute.reduce_sum_to, "reduce_sum")
    kinds.add("reduce_sum", compute.reduce_sum, "reduce_sum")
    kinds.add("expand_axes", compute.expand_axes, "injective")
