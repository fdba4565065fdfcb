"""The embedding operator and integer feeds: ids keep their type, are checked where they are
fed, and the table's gradient is a deterministic scatter-add."""

import numpy as np
import pytest
import torch
import tvm

import dlsys.autodiff as ad
from dlsys import ops
from dlsys.errors import DtypeError, FeedError, ShapeError
from dlsys.ops.placeholder import Parameter


def _table(rows=11, dim=20, dtype="float64", seed=0):
    data = np.random.default_rng(seed).standard_normal((rows, dim)).astype(dtype)
    return Parameter(tvm.runtime.tensor(data), "W")


@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 4)])
def test_embedding_and_its_gradient_match_pytorch(ids_dtype, shape):
    table = _table()
    ids = ad.Variable("ids")
    upstream = ad.Variable("g")
    out = ops.embedding_op(table, ids)
    loss = ops.sum_op(out * upstream)
    (grad,) = ad.gradients(loss, [table])
    rng = np.random.default_rng(1)
    id_values = rng.integers(0, 11, shape).astype(ids_dtype)
    id_values.flat[0] = id_values.flat[-1]  # a repeated id accumulates
    g = rng.standard_normal((*shape, 20))
    got_out, got_grad = ad.Executor([out, grad], dtype="float64").run(
        {ids: id_values, upstream: g}, convert_to_numpy_ret_vals=True)
    weight = torch.tensor(table.data.numpy(), requires_grad=True)
    want = torch.nn.functional.embedding(torch.from_numpy(id_values.astype(np.int64)), weight)
    (want * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(got_out, want.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_grad, weight.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_the_table_gradient_is_bit_identical_run_to_run():
    table = _table(rows=5, dim=64, dtype="float32")
    ids = ad.Variable("ids")
    upstream = ad.Variable("g")
    (grad,) = ad.gradients(ops.sum_op(ops.embedding_op(table, ids) * upstream), [table])
    executor = ad.Executor([grad])
    rng = np.random.default_rng(2)
    feeds = {ids: rng.integers(0, 5, (64, 33)), upstream:
             rng.standard_normal((64, 33, 64)).astype(np.float32)}
    first = executor.run(feeds, convert_to_numpy_ret_vals=True)[0]
    for _ in range(3):
        again = executor.run(feeds, convert_to_numpy_ret_vals=True)[0]
        assert again.tobytes() == first.tobytes()


def test_ids_pass_through_a_reshape_and_keep_their_type():
    table = _table(dtype="float32")
    ids = ad.Variable("ids")
    out = ops.embedding_op(table, ops.reshape_op(ids, (-1,)))
    values = np.arange(12, dtype=np.int32).reshape(3, 4) % 11
    got = ad.Executor([out]).run({ids: values}, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_array_equal(got, table.data.numpy()[values.reshape(-1)])


def test_narrow_integer_ids_are_widened_and_tvm_tensors_accepted():
    table = _table(dtype="float32")
    ids = ad.Variable("ids")
    executor = ad.Executor([ops.embedding_op(table, ids)])
    values = np.array([[1, 10], [0, 3]], dtype=np.uint8)
    want = table.data.numpy()[values]
    for fed in (values, tvm.runtime.tensor(values.astype(np.int32))):
        np.testing.assert_array_equal(executor.run({ids: fed}, True)[0], want)


@pytest.mark.parametrize("bad, error, match", [
    (np.array([1.0, 2.0], dtype=np.float32), DtypeError, "int32 or int64 array, not float32"),
    (np.array([True, False]), DtypeError, "not bool"),
    (np.array([3, 11]), FeedError, r"id 11 at \(1,\) is out of range .* \[0, 11\)"),
    (np.array([-1, 0]), FeedError, r"id -1 at \(0,\)"),
])
def test_bad_ids_are_named_errors_at_the_feed(bad, error, match):
    ids = ad.Variable("ids")
    executor = ad.Executor([ops.embedding_op(_table(dtype="float32"), ids)])
    with pytest.raises(error, match=match):
        executor.run({ids: bad})


def test_ids_out_of_range_in_a_tvm_tensor_are_refused_too():
    ids = ad.Variable("ids")
    executor = ad.Executor([ops.embedding_op(_table(dtype="float32"), ids)])
    with pytest.raises(FeedError, match="id 40"):
        executor.run({ids: tvm.runtime.tensor(np.array([0, 40], dtype=np.int64))})


def test_ids_read_as_floats_or_floats_read_as_ids_are_refused_by_name():
    ids = ad.Variable("ids")
    table = _table(rows=4, dim=4, dtype="float32")
    both = [ops.embedding_op(table, ids), ops.matmul_op(ids, table)]
    with pytest.raises(DtypeError, match=r"MatMul\(ids, W\): input 0 \(ids\) is integer indices"):
        ad.Executor(both).run({ids: np.zeros((2, 4), dtype=np.int64)})
    x = ad.Variable("x")
    with pytest.raises(DtypeError, match="holds integer indices, but"):
        ad.Executor([ops.embedding_op(table, x * 2)]).run({x: np.zeros(3, dtype=np.int64)})


def test_a_table_that_is_not_a_matrix_is_a_shape_error():
    ids = ad.Variable("ids")
    table = Parameter(tvm.runtime.tensor(np.zeros((2, 3, 4), dtype=np.float32)), "T")
    with pytest.raises(ShapeError, match="must be \\(num_embeddings, embedding_dim\\)"):
        ad.Executor([ops.embedding_op(table, ids)]).run({ids: np.zeros(3, dtype=np.int64)})
