"""Softmax, the softmax cross-entropy loss and its adjoint, and one-hot labels: row-wise
kernels (``compute``) whose rows run in parallel (``schedule``); softmax and log-softmax
along any axis of any rank, and their adjoints (``softmax``), with the norm family's row
schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.loss import compute, cross_entropy, softmax
from dlsys.kernels.loss.schedule import (
    schedule_row_blocks,
    schedule_row_loss,
    schedule_row_softmax,
)

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"softmax": schedule_row_softmax, "row_loss": schedule_row_loss,
             "row_blocks": schedule_row_blocks}


def register(kinds: Registrar) -> None:
    kinds.add("softmax", compute.softmax, "softmax")
    kinds.add("softmax_cross_entropy", compute.softmax_cross_entropy, "row_loss")
    kinds.add("softmax_cross_entropy_gradient", compute.softmax_cross_entropy_gradient,
              "softmax")
    kinds.add("softmax_cross_entropy_with_gradient",
              compute.softmax_cross_entropy_with_gradient, "row_blocks")
    kinds.add("one_hot", compute.one_hot, "injective")
    kinds.add("cross_entropy", cross_entropy.cross_entropy, "row_loss")
    kinds.add("cross_entropy_gradient", cross_entropy.cross_entropy_gradient, "softmax")
    kinds.add("cross_entropy_with_gradient", cross_entropy.cross_entropy_with_gradient,
              "row_blocks")
    # One sum over the targets, a few microseconds as TVM lays it out.
    kinds.add("target_count", cross_entropy.target_count, "as_written")
    # Along any axis of any rank, with the row schedule of the norm family.
    kinds.add("softmax_along", softmax.softmax_along, "rows")
    kinds.add("softmax_along_gradient", softmax.softmax_along_gradient, "rows")
