"""The matrix product: its compute (``compute``), the tiles it may use (``config``), the
schedules that run it (``schedule``), the per-shape choice of tiles (``search``), and the
schedule of stacks of matrices (``batched``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.matmul import compute
from dlsys.kernels.matmul.batched import schedule_batched
from dlsys.kernels.matmul.schedule import schedule_matmul_prepacked
from dlsys.kernels.matmul.search import decisions, prepacked_tiles, schedule_matmul_packed

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"matmul": schedule_matmul_packed, "matmul_prepacked": schedule_matmul_prepacked,
             "batched_matmul": schedule_batched}
# The tiles depend on a tuning log as well as the shapes: the disk cache keys kernels by them.
DECISIONS = {"matmul": decisions}


def _packed_layout(params: tuple, dtype: str) -> tuple | None:
    """A constant B's panels, chosen here: the spec's leading ``(shape_a, trans_a, shape_b,
    trans_b)`` decide the tiles (``search.prepacked_tiles``)."""
    return prepacked_tiles(*params[:4], dtype)


def register(kinds: Registrar) -> None:
    kinds.add("matmul", compute.matmul, "matmul", packed_layout=_packed_layout)
    kinds.add_epilogue("matmul_epilogue", compute.matmul_epilogue, "matmul",
                       packed_layout=_packed_layout)
    # A constant B packed once (an inference session's weights), then read by every product.
    kinds.add("pack_panels", compute.pack_panels, "injective")
    kinds.add_epilogue("matmul_prepacked", compute.matmul_prepacked, "matmul_prepacked")
    # Stacks of matrices (rank >= 3, batch axes broadcast), with or without an epilogue.
    kinds.add_epilogue("batched_matmul", compute.batched_matmul, "batched_matmul")
