"""Lookups built ``from_end`` (ONNX's Gather of fed ids) read a negative id as counting
from the end of the table, as ``numpy.take`` does, in the lookup and in its gradient; the
feed check admits ``[-rows, rows)`` for them only, so a plain embedding still refuses
negative token ids."""

import numpy as np
import pytest
import tvm

import dlsys.autodiff as ad
from dlsys import ops
from dlsys.errors import FeedError
from dlsys.ops.placeholder import Parameter


def _table(rows: int, dim: int, seed: int = 0) -> Parameter:
    data = np.random.default_rng(seed).standard_normal((rows, dim))
    return Parameter(tvm.runtime.tensor(data), "W")


@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
def test_negative_ids_count_from_the_end_in_the_lookup_and_its_gradient(ids_dtype):
    table, ids, upstream = _table(7, 16), ad.Variable("ids"), ad.Variable("g")
    out = ops.embedding_op(table, ids, from_end=True)
    (grad,) = ad.gradients(ops.sum_op(out * upstream), [table])
    # Both ends of the range, and one row picked both as -1 and as 6 (their gradients add).
    id_values = np.array([[-7, -1, 6], [0, 3, -4]], dtype=ids_dtype)
    g = np.random.default_rng(1).standard_normal((2, 3, 16))
    got_out, got_grad = ad.Executor([out, grad], dtype="float64").run(
        {ids: id_values, upstream: g}, convert_to_numpy_ret_vals=True)
    weight = table.data.numpy()
    np.testing.assert_array_equal(got_out, np.take(weight, id_values, axis=0))
    want_grad = np.zeros_like(weight)
    np.add.at(want_grad, id_values.reshape(-1) % 7, g.reshape(-1, 16))
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("from_end, bad, match", [
    (True, [0, -8], r"id -8 at \(1,\) is out of range .* \[-7, 7\)"),
    (True, [7, 0], r"id 7 at \(0,\)"),
    (False, [0, -1], r"id -1 at \(1,\) is out of range .* \[0, 7\)"),
])
def test_ids_outside_the_range_each_lookup_admits_are_refused_at_the_feed(from_end, bad,
                                                                          match):
    ids = ad.Variable("ids")
    executor = ad.Executor([ops.embedding_op(_table(7, 4), ids, from_end=from_end)],
                           dtype="float64")
    with pytest.raises(FeedError, match=match):
        executor.run({ids: np.array(bad, dtype=np.int64)})
