"""Hypothesis: random shapes for the elementwise, broadcast and reduce kernels and random
small matmuls, each against numpy. ``HYPOTHESIS_PROFILE`` (tests/conftest.py) sets how many."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_testing import (
    assert_case,
    broadcast_binary_case,
    broadcast_to_case,
    elementwise_cases,
    matmul_case,
    reduce_case,
)

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from(["float32", "float64"])


@st.composite
def broadcast_pairs(draw):
    """``(small, big)``: ``small`` broadcasts to ``big`` (dropped leading axes, size-1 axes)."""
    big = draw(shapes)
    kept = big[draw(st.integers(0, len(big) - 1)):]
    small = tuple(1 if draw(st.booleans()) else d for d in kept)
    return small, big


@settings(deadline=None)
@given(shape=shapes, which=st.integers(0, 7), dtype=dtypes)
def test_elementwise(shape, which, dtype):
    assert_case(elementwise_cases(shape)[which], "llvm", dtype)


@settings(deadline=None)
@given(pair=broadcast_pairs(), dtype=dtypes)
def test_broadcast_to(pair, dtype):
    assert_case(broadcast_to_case(*pair), "llvm", dtype)


@settings(deadline=None)
@given(pair=broadcast_pairs(), dtype=dtypes)
def test_reduce_sum_to(pair, dtype):
    small, big = pair
    assert_case(reduce_case(big, small), "llvm", dtype)


@settings(deadline=None)
@given(a=broadcast_pairs(), swap=st.booleans(), op=st.sampled_from(["add", "mul"]))
def test_broadcast_binary(a, swap, op):
    small, big = a
    assert_case(broadcast_binary_case(op, *((big, small) if swap else (small, big))), "llvm",
                "float32")


@settings(deadline=None)
@given(m=st.integers(1, 24), k=st.integers(1, 24), n=st.integers(1, 40),
       trans_a=st.booleans(), trans_b=st.booleans(), dtype=dtypes)
def test_matmul(m, k, n, trans_a, trans_b, dtype):
    assert_case(matmul_case(m, k, n, trans_a, trans_b), "llvm", dtype)


def test_reference_of_reduce_matches_broadcast_adjoint():
    # The reference itself: summing down undoes broadcasting's repetition count.
    from kernel_testing import reduce_to
    a = np.ones((2, 3, 4))
    np.testing.assert_array_equal(reduce_to(a, (3, 1)), np.full((3, 1), 8.0))
