"""Layout changes (a transpose, a slice, a concatenation, a tile, a pad and their adjoints,
a triangle's mask): index arithmetic only (``compute``), run with the shared injective
schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.layout import compute

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES: dict = {}


def register(kinds: Registrar) -> None:
    kinds.add("transpose", compute.transpose, "injective")
    kinds.add("slice", compute.slice_axis, "injective")
    kinds.add("slice_gradient", compute.slice_axis_gradient, "injective")
    kinds.add("concat", compute.concat, "injective")
    kinds.add("tile", compute.tile, "injective")
    kinds.add("trilu", compute.trilu, "injective")
    kinds.add("pad", compute.pad, "injective")
    kinds.add("pad_gradient", compute.pad_gradient, "injective")
