"""Reshape and flatten: aliases of their input's storage (no kernel), with gradients."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.ops.layout import transpose_op
from dlsys.ops.reshape import flatten_op, reshape_op


def test_reshape_and_flatten_run_no_kernel_and_share_storage():
    x, w = ad.Variable("x"), ad.Variable("w")
    hidden = ad.relu_op(x)
    flat = flatten_op(hidden)
    out = reshape_op(ad.matmul_op(flat, w), (-1,))
    executor = ad.Executor([flat, out])
    xv = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    wv = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    got_flat, got_out = executor.run({x: xv, w: wv}, convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(got_flat, np.maximum(xv, 0).reshape(2, 12))
    np.testing.assert_allclose(got_out, (np.maximum(xv, 0).reshape(2, 12) @ wv).ravel(),
                               rtol=1e-5, atol=1e-6)
    assert executor.kernel_calls == 2  # relu and matmul only
    table = {name: (sid, how) for name, _, sid, how in executor.storage_table()}
    assert table[flat.name] == (table[hidden.name][0], "alias")


def test_reshape_of_a_fed_tensor_follows_rebinding():
    x = ad.Variable("x")
    flat = flatten_op(x)
    executor = ad.Executor([flat, flat * 2.0])
    for seed in range(2):  # a new TVM tensor each run: the reshaped slots must follow it
        value = np.random.default_rng(seed).normal(size=(3, 2, 2)).astype(np.float32)
        got, doubled = executor.run({x: tvm.runtime.tensor(value)},
                                    convert_to_numpy_ret_vals=True)
        np.testing.assert_array_equal(got, value.reshape(3, 4))
        np.testing.assert_array_equal(doubled, 2 * value.reshape(3, 4))


def test_reshapes_of_any_rank_are_views():
    x = ad.Variable("x")
    value = np.random.default_rng(2).normal(size=(2, 3, 4, 5)).astype(np.float32)
    merged = reshape_op(reshape_op(x, (6, -1)), (2, 3, 2, 2, 5))
    executor = ad.Executor([merged * 2.0])
    out = executor.run({x: value}, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_array_equal(out, 2 * value.reshape(2, 3, 2, 2, 5))
    assert executor.kernel_calls == 1  # the multiply; both reshapes are views


@pytest.mark.parametrize("build, shapes", [
    (lambda a: reshape_op(a, (3, -1)) * 2.0, [(2, 3, 2)]),
    (lambda a, b: ad.matmul_op(flatten_op(a), b), [(3, 2, 5), (10, 4)]),
    (lambda a: reshape_op(ad.relu_op(a), (4, 3)) * 2.0, [(2, 6)]),
    # any rank: attention's heads split off a (B, T, C) tensor, moved, and merged back
    (lambda a: reshape_op(transpose_op(reshape_op(a, (2, 3, 2, -1)), (0, 2, 1, 3)), (4, 3, 2)),
     [(2, 3, 4)]),
    (lambda a: reshape_op(a, (1, 2, 3, 1, 2)) * 2.0, [(3, 4)]),
    (lambda a, b: ad.matmul_op(reshape_op(a, (2, 3, 4)), b), [(6, 4), (2, 4, 5)]),
])
def test_gradients_match_finite_differences(build, shapes):
    check_gradients(build, shapes)


@pytest.mark.parametrize("shape, spec, error", [
    ((2, 6), (5, -1), ShapeError), ((2, 6), (4, 4), ShapeError), ((2, 6), (-1, -1), ShapeError),
    ((2, 6), (0, 12), ShapeError), ((2, 6), "12", ArgumentTypeError),
    ((2, 6), (2.0, 6), ArgumentTypeError),
])
def test_bad_reshapes_name_the_node(shape, spec, error):
    x = ad.Variable("images")
    with pytest.raises(error) as caught:
        ad.Executor([reshape_op(x, spec)]).run({x: np.ones(shape)})
    assert error is ArgumentTypeError or "images" in str(caught.value)
