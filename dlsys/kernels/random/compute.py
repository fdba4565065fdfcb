"""Compute definitions of random kernels: dropout's mask, drawn from a counter-based hash.

The mask is a pure function of (seed, element index), so the forward kernel and the
gradient's kernel, given the same seed, drop the same elements without storing a mask, and
the seed (a one-element state tensor) advances once per run.
"""

from __future__ import annotations

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape

# The seed is kept in the graph's float dtype: float32 holds every integer below 2**24.
SEED_PERIOD = 1 << 24


def _mix(value):
    """A 32-bit integer hash (an avalanche of xor-shifts and odd multiplies): consecutive
    inputs give unrelated outputs, so each element's draw is independent of its neighbours'."""
    value = value ^ (value >> tirx.const(16, "uint32"))
    value = value * tirx.const(0x7FEB352D, "uint32")
    value = value ^ (value >> tirx.const(15, "uint32"))
    value = value * tirx.const(0x846CA68B, "uint32")
    return value ^ (value >> tirx.const(16, "uint32"))


def uniform_at(seed, flat_index):
    """A uniform draw in [0, 1) for one element: 24 bits of the hash of (seed, index)."""
    key = _mix(seed.astype("uint32") * tirx.const(0x9E3779B9, "uint32")
               + flat_index.astype("uint32"))
    return (key >> tirx.const(8, "uint32")).astype("float32") * tirx.const(1.0 / SEED_PERIOD,
                                                                              "float32")


def dropout(shape: Shape, probability: float, dtype: str):
    """``X * keep / (1 - p)`` where ``keep`` is 1 for an element whose draw is at least ``p``;
    inputs ``X`` and the seed ``S`` (1,)."""
    x = te.placeholder(shape, dtype=dtype, name="X")
    seed = te.placeholder((1,), dtype=dtype, name="S")
    scale = tirx.const(0.0 if probability >= 1 else 1.0 / (1.0 - probability), dtype)
    threshold = tirx.const(probability, "float32")
    zero = tirx.const(0, dtype)

    def body(*index):
        flat = index[0]
        for axis, size in zip(index[1:], shape[1:]):
            flat = flat * size + axis
        keep = uniform_at(seed[0], flat) >= threshold
        return tirx.Select(keep, x[index] * scale, zero)

    return [x, seed], [te.compute(shape, body, name="dropout")]


def next_seed(dtype: str):
    """``S' = (S + 1) mod 2**24``: the next run's seed, written over ``S`` in place."""
    seed = te.placeholder((1,), dtype=dtype, name="S")
    period = tirx.const(SEED_PERIOD, dtype)
    one = tirx.const(1, dtype)
    nxt = te.compute((1,), lambda i: tirx.Select(seed[i] + one >= period, seed[i] + one - period,
                                                 seed[i] + one), name="next_seed")
    return [seed], [nxt]
