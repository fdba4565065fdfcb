"""How the attention kernels run: the block of positions one task's vectors span, and how
many rows one vector body computes at once. The kernels write their own loops (``compute``:
an online softmax has no TE form a schedule could split), so these choices are the whole
of their schedule; the shared ``as_written`` schedule family leaves the loops so.

Both were measured on znver4 (one thread, B=H=2, D=32, T = S = 128 and 512, causal).
"""

from __future__ import annotations

from dlsys.kernels.cpu import host

# Rows one vectorised body computes at once: each vector it loads serves that many rows'
# sums, and their independent chains hide the multiply-adds' latency (8 against 4 and 2:
# 5-25% faster kernels).
ROWS_AT_ONCE = 8


def block_lanes(dtype: str) -> int:
    """Positions per block: one vector register of ``dtype`` (two were 10-30% slower: a
    causal diagonal block wastes more, and half as many rows fit the registers at once)."""
    return host().lanes(dtype)
