"""Sums and means over any axes, and their adjoints: float32 blocks added into float64
totals (``compute``), vectorised and shared between cores (``schedule``); the other
reductions (norms, extremes, products, log-sum-exp, arg max and min) and their adjoints
(``modes``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.reduce import compute, cumulative, modes
from dlsys.kernels.reduce.schedule import schedule_each_block, schedule_reduce_sum

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"reduce_sum": schedule_reduce_sum, "each_block": schedule_each_block}


def register(kinds: Registrar) -> None:
    kinds.add("reduce_sum_to", compute.reduce_sum_to, "reduce_sum")
    kinds.add("reduce_sum", compute.reduce_sum, "reduce_sum")
    kinds.add("expand_axes", compute.expand_axes, "injective")
    kinds.add("reduce_norm", modes.reduce_norm, "reduce_sum")
    kinds.add("reduce_extreme", modes.reduce_extreme, "each_block")
    kinds.add("reduce_mode_gradient", modes.reduce_mode_gradient, "injective")
    kinds.add("extreme_count", modes.extreme_count, "each_block")
    kinds.add("arg_extreme", modes.arg_extreme, "each_block")
    kinds.add("hardmax", modes.hardmax, "each_block")
    kinds.add("cumulative_sum", cumulative.cumulative_sum, "as_written")
    kinds.add("cumulative_product", cumulative.cumulative_product, "as_written")
    kinds.add("cumulative_product_adjoint", cumulative.cumulative_product_adjoint,
              "as_written")
