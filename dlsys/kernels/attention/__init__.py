"""Fused attention: the forward pass with an online softmax over blocks of keys, and its
adjoints recomputing the probabilities from the row log-sum-exp, none holding the T x S
matrix of scores (``compute``, loop nests written in TIR with ``tir``'s builders; their
block sizes in ``schedule``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.attention import compute

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

# The kernels lay out their own loops (parallel tasks, vectors across a block of
# positions): the shared "as_written" schedule leaves them so.
SCHEDULES: dict = {}


def register(kinds: Registrar) -> None:
    kinds.add("attention_forward", compute.attention_forward, "as_written")
    kinds.add("attention_key_gradient", compute.attention_key_gradient, "as_written")
    kinds.add("attention_query_gradient", compute.attention_query_gradient, "as_written")
