"""The executor against a numpy evaluation of the same graph, its buffers, feeds and errors.

float32 runs are compared to float64 numpy at rtol = 1e-4, atol = 1e-5 (sums of up to 784
float32 products of unit-scale values); float64 runs at rtol = 1e-10, atol = 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from graph_gen import build_mlp, numpy_eval

from dlsys import autodiff as ad
from dlsys.errors import ArgumentTypeError, DtypeError, FeedError, ShapeError
from dlsys.testing.synthetic import misaligned

F32_TOL = {"rtol": 1e-4, "atol": 1e-5}
F64_TOL = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(scope="module")
def mlp():
    return build_mlp()


def _assert_matches_numpy(results, nodes, feeds, tol):
    expected = numpy_eval(nodes, feeds)
    for node, got, want in zip(nodes, results, expected):
        got = got.numpy() if isinstance(got, tvm.runtime.Tensor) else got
        assert got.shape == want.shape, node.name
        np.testing.assert_allclose(got, want, err_msg=node.name, **tol)


@pytest.mark.parametrize("dtype, tol", [("float32", F32_TOL), ("float64", F64_TOL)])
def test_mlp_loss_gradients_and_logits_match_numpy(mlp, dtype, tol):
    feeds = mlp.feeds(batch=64)
    executor = ad.Executor(mlp.eval_nodes, dtype=dtype)
    results = executor.run(feeds, convert_to_numpy_ret_vals=True)
    assert all(r.dtype == np.dtype(dtype) for r in results)
    _assert_matches_numpy(results, mlp.eval_nodes, feeds, tol)


def test_new_batch_sizes_are_replanned(mlp):
    executor = ad.Executor(mlp.eval_nodes, dtype="float64")
    for batch in (64, 17, 64, 1):
        feeds = mlp.feeds(batch, seed=batch)
        results = executor.run(feeds, convert_to_numpy_ret_vals=True)
        _assert_matches_numpy(results, mlp.eval_nodes, feeds, F64_TOL)
        assert executor.memory_stats()["naive_bytes"] > 0


def _storage_pointers(executor, feeds: bool = True) -> list[int]:
    """Data pointers of every tensor the frozen kernel calls pass (``feeds=False``: but the
    feeds', since a large numpy feed is read where it lies, a new array at each run)."""
    prepared = executor._prepared
    fed = set() if feeds else {(call, position) for slots in prepared.feed_slots.values()
                                for call, position, _ in slots}
    return [arg.data_ptr() for call, (_, args) in enumerate(prepared.calls)
            for position, arg in enumerate(args) if (call, position) not in fed]


def test_same_shapes_reuse_every_buffer(mlp):
    executor = ad.Executor(mlp.eval_nodes)
    first_feeds, second_feeds = mlp.feeds(32, seed=1), mlp.feeds(32, seed=2)
    first = executor.run(first_feeds)
    first_ptrs = [t.data_ptr for t in first]
    prepared, internal = executor._prepared, _storage_pointers(executor, feeds=False)
    second = executor.run(second_feeds)
    assert [t.data_ptr for t in second] == first_ptrs
    assert executor._prepared is prepared
    assert _storage_pointers(executor, feeds=False) == internal
    # The same buffers, but really recomputed: the results are the second feeds' values.
    _assert_matches_numpy(second, mlp.eval_nodes, second_feeds, F32_TOL)


def test_tvm_tensor_feeds_are_used_without_copy():
    rng = np.random.default_rng(0)
    x, w = ad.Variable("x"), ad.Variable("w")
    out = ad.relu_op(ad.matmul_op(x, w))
    executor = ad.Executor([out])
    x_val = rng.normal(size=(4, 3)).astype("float32")
    x_tensor = tvm.runtime.tensor(x_val)
    w_tensor = tvm.runtime.tensor(rng.normal(size=(3, 5)).astype("float32"))
    (result,) = executor.run({x: x_tensor, w: w_tensor})
    assert executor.dtype == "float32"
    pointers = _storage_pointers(executor)
    assert x_tensor.data_ptr() in pointers and w_tensor.data_ptr() in pointers
    np.testing.assert_allclose(result.numpy(), np.maximum(x_val @ w_tensor.numpy(), 0),
                               **F32_TOL)
    # Writing into the fed tensor between runs is seen by the next run: it was not copied.
    x_tensor.copyfrom(-x_val)
    (result,) = executor.run({x: x_tensor, w: w_tensor})
    np.testing.assert_allclose(result.numpy(), np.maximum(-x_val @ w_tensor.numpy(), 0),
                               **F32_TOL)
    # The feeds themselves are never written.
    np.testing.assert_array_equal(x_tensor.numpy(), -x_val)


def test_switching_between_tensor_and_numpy_feeds():
    x = ad.Variable("x")
    executor = ad.Executor([x * 2.0])
    tensor = tvm.runtime.tensor(np.ones((2, 2), dtype="float32"))
    assert executor.run({x: tensor}, True)[0].tolist() == [[2, 2], [2, 2]]
    assert executor.run({x: np.full((2, 2), 3.0)}, True)[0].tolist() == [[6, 6], [6, 6]]
    assert executor.run({x: tensor}, True)[0].tolist() == [[2, 2], [2, 2]]


def test_float64_numpy_feeds_are_converted_to_the_executor_dtype():
    rng = np.random.default_rng(0)
    x, w = ad.Variable("x"), ad.Variable("w")
    out = ad.matmul_op(x, w, trans_B=True)
    x_val, w_val = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    executor = ad.Executor([out])  # float32 by default for numpy feeds
    (got,) = executor.run({x: x_val, w: w_val[:, :]}, convert_to_numpy_ret_vals=True)
    assert got.dtype == np.float32
    want = x_val.astype(np.float32) @ w_val.astype(np.float32).T
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # A non-contiguous view is accepted too.
    wide = np.zeros((2, 8))
    wide[:, ::2] = w_val
    (got,) = executor.run({x: x_val, w: wide[:, ::2]}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_convert_to_numpy_returns_independent_arrays():
    x = ad.Variable("x")
    executor = ad.Executor([x + 1.0, x * 3.0])
    first = executor.run({x: np.ones((2, 3))}, convert_to_numpy_ret_vals=True)
    assert all(isinstance(r, np.ndarray) for r in first)
    executor.run({x: np.zeros((2, 3))})
    # The executor overwrote its buffers; the numpy copies must keep the first run's values.
    np.testing.assert_array_equal(first[0], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(first[1], np.full((2, 3), 3.0))
    tensors = executor.run({x: np.zeros((2, 3))})
    assert all(isinstance(t, tvm.runtime.Tensor) for t in tensors)


def test_eval_node_that_is_a_placeholder_returns_its_feed():
    x = ad.Variable("x")
    (got, doubled) = ad.Executor([x, x * 2.0]).run({x: np.arange(3.0)}, True)
    np.testing.assert_array_equal(got, [0, 1, 2])
    np.testing.assert_array_equal(doubled, [0, 2, 4])


def test_missing_feed_names_the_placeholder():
    x, w = ad.Variable("x"), ad.Variable("weights_1")
    executor = ad.Executor([ad.matmul_op(x, w)])
    with pytest.raises(FeedError, match="weights_1"):
        executor.run({x: np.ones((2, 2))})


def test_feed_of_a_computed_node_names_it():
    x = ad.Variable("x")
    hidden = ad.relu_op(x)
    executor = ad.Executor([hidden * 2.0])
    with pytest.raises(FeedError, match=r"Relu\(x\)"):
        executor.run({x: np.ones(2), hidden: np.ones(2)})


def test_feed_of_a_placeholder_from_another_graph_names_it():
    x, stranger = ad.Variable("x"), ad.Variable("stranger")
    executor = ad.Executor([x * 2.0])
    with pytest.raises(FeedError, match="stranger"):
        executor.run({x: np.ones(2), stranger: np.ones(2)})


def test_tvm_feed_of_the_wrong_dtype_names_feed_and_dtypes():
    x, y = ad.Variable("x"), ad.Variable("y")
    executor = ad.Executor([x + y], dtype="float32")
    wrong = tvm.runtime.tensor(np.ones(3, dtype="float64"))
    with pytest.raises(DtypeError) as caught:
        executor.run({x: np.ones(3), y: wrong})
    message = str(caught.value)
    assert "y" in message and "float64" in message and "float32" in message


def test_rejected_dtype_does_not_stick_to_later_runs():
    x = ad.Variable("x")
    executor = ad.Executor([x * 2.0])
    with pytest.raises(DtypeError, match="int32"):
        executor.run({x: tvm.runtime.tensor(np.ones(3, dtype="int32"))})
    (got,) = executor.run({x: tvm.runtime.tensor(np.ones(3, dtype="float32"))}, True)
    assert got.dtype == np.float32 and got.tolist() == [2, 2, 2]


def test_graph_deeper_than_the_recursion_limit():
    # Sorting, differentiating and planning must not recurse per node.
    x = ad.Variable("x")
    h = x
    for i in range(1500):
        h = h * 1.001 if i % 2 else h + 0.01
    (grad,) = ad.gradients(h, [x])
    value, slope = ad.Executor([h, grad], dtype="float64").run(
        {x: np.ones((2, 2))}, convert_to_numpy_ret_vals=True)
    want_value = numpy_eval([h], {x: np.ones((2, 2))})[0]
    np.testing.assert_allclose(value, want_value, **F64_TOL)
    np.testing.assert_allclose(slope, np.full((2, 2), 1.001 ** 750), **F64_TOL)


def test_bad_graph_arguments_raise_dlsys_errors_naming_them():
    x = ad.Variable("x")
    with pytest.raises(ArgumentTypeError, match="eval_node_list\\[1\\]"):
        ad.Executor([x, "not a node"])
    with pytest.raises(ArgumentTypeError, match="AddByConst\\(x"):
        x + "1"


@pytest.mark.parametrize("as_numpy", [False, True])
def test_returned_output_fed_back_is_read_before_it_is_overwritten(monkeypatch, as_numpy):
    # Under the naive schedule a matmul reads its operand while writing its output; feeding
    # the executor's own output buffer back in (the TVM tensor returned, or a numpy view of
    # it, large enough to be read in place if it were the caller's) must not let the two
    # overlap.
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    h, w = ad.Variable("h"), ad.Variable("W")
    executor = ad.Executor([ad.matmul_op(h, w)])
    rng = np.random.default_rng(0)
    # Large enough that LLVM cannot keep a whole row of the operand in registers.
    w_val = rng.standard_normal((200, 200)).astype("float32") / 14
    cur = rng.standard_normal((200, 200)).astype("float32")
    expected = cur.astype("float64")
    (out,) = executor.run({h: cur, w: w_val})
    for _ in range(3):
        expected = expected @ w_val
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)
        (out,) = executor.run({h: np.from_dlpack(out) if as_numpy else out, w: w_val})


@pytest.mark.parametrize("as_numpy", [False, True])
@pytest.mark.parametrize("size", [4, 32768])  # copied in, and read in place (128 KiB)
def test_returned_feed_fed_back_as_another_feed_is_read_before_it_is_copied_over(as_numpy,
                                                                                 size):
    # The y returned is y's feed buffer: fed back as x while a new y is copied into that
    # buffer (a read-only array is copied whatever its size), it must be read first.
    x, y = ad.Variable("x"), ad.Variable("y")
    executor = ad.Executor([y, 2 * x + y])
    first_y, new_y = np.full(size, 10.0, "float32"), np.full(size, 100.0, "float32")
    first_y.setflags(write=False)
    new_y.setflags(write=False)
    returned_y, _ = executor.run({x: np.ones(size, "float32"), y: first_y})
    fed = np.from_dlpack(returned_y) if as_numpy else returned_y
    _, z = executor.run({x: fed, y: new_y})
    np.testing.assert_array_equal(z.numpy(), np.full(size, 120.0))


def test_feed_sharing_memory_with_a_state_is_read_before_the_state_is_updated():
    # A running statistic is written over its buffer's tensor during the run (here with the
    # batch's means, about 1); a feed viewing that tensor must be read as it was before.
    from dlsys import nn

    bn = nn.BatchNorm2d(2, momentum=1.0)
    x, shift = ad.Variable("x"), ad.Variable("shift")
    out = ad.sum_op(bn(x), (0, 2, 3)) + shift  # the normalised sums are 0
    before = np.array([5.0, 7.0], "float32")
    bn.running_mean.data.copyfrom(before)
    batch = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype("float32") + 1
    (got,) = ad.Executor([out]).run({x: batch, shift: bn.running_mean.data},
                                    convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got, before, atol=1e-4)


def test_one_executor_from_several_threads_gives_every_thread_its_own_answer():
    from concurrent.futures import ThreadPoolExecutor

    x, w = ad.Variable("x"), ad.Variable("W")
    executor = ad.Executor([ad.relu_op(ad.matmul_op(x, w))])
    rng = np.random.default_rng(1)
    w_val = rng.standard_normal((64, 32)).astype("float32")
    inputs = [rng.standard_normal((128, 64)).astype("float32") for _ in range(16)]

    def work(x_val):
        (got,) = executor.run({x: x_val, w: w_val}, convert_to_numpy_ret_vals=True)
        return got

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, inputs * 4))
    for x_val, got in zip(inputs * 4, results):
        np.testing.assert_allclose(got, np.maximum(x_val @ w_val, 0), rtol=1e-4, atol=1e-4)


def test_complex_feed_is_refused_not_truncated():
    x = ad.Variable("x")
    executor = ad.Executor([ad.relu_op(x)])
    with pytest.raises(DtypeError, match="x is complex"):
        executor.run({x: np.ones((2, 3), dtype=np.complex64) * 1j})


def test_relu_keeps_nan_so_a_nan_reaches_the_loss():
    x, labels = ad.Variable("x"), ad.Variable("y_")
    relu = ad.relu_op(x)
    loss = ad.softmaxcrossentropy_op(relu, labels)
    x_val = np.ones((2, 3), dtype="float32")
    x_val[1, 2] = np.nan
    out, loss_val = ad.Executor([relu, loss]).run(
        {x: x_val, labels: np.eye(3, dtype="float32")[[0, 1]]}, convert_to_numpy_ret_vals=True)
    assert np.isnan(out[1, 2]) and np.isnan(loss_val[0])


def test_gradient_of_an_unrelated_node_names_what_it_needs():
    x, w, unrelated = ad.Variable("x"), ad.Variable("W"), ad.Variable("u")
    loss = ad.matmul_op(x, w)
    (grad,) = ad.gradients(loss, [unrelated])
    executor = ad.Executor([grad])
    with pytest.raises(FeedError, match=r"placeholder x is not read by .*ZerosLike\(u\).*needs: u"):
        executor.run({x: np.ones((2, 2)), w: np.ones((2, 2)), unrelated: np.ones(3)})
    (zeros,) = executor.run({unrelated: np.ones(3)}, convert_to_numpy_ret_vals=True)
    assert not zeros.any()


@pytest.mark.parametrize("make", [
    lambda x: ad.Executor(x),
    lambda x: ad.Executor([x], ctx="cpu"),
    lambda x: ad.gradients(x, x),
    lambda x: ad.Variable(3),
    lambda x: x + 1e300,
    lambda x: x * 10**400,
    lambda x: x + float("nan"),
], ids=["executor-node", "ctx-string", "gradients-node", "variable-int", "const-1e300",
        "const-10**400", "const-nan"])
def test_bad_graph_arguments_are_dlsys_errors(make):
    from dlsys.errors import DlsysError

    with pytest.raises(DlsysError):
        make(ad.Variable("x"))


def test_cuda_context_without_a_gpu_is_a_clear_error():
    from dlsys.errors import ArgumentError

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    with pytest.raises(ArgumentError, match="does not exist"):
        ad.Executor([ad.Variable("x")], ctx=tvm.cuda(0))


def test_a_value_too_large_to_index_is_refused_before_allocating():
    a, b = ad.Variable("a"), ad.Variable("b")
    executor = ad.Executor([a + b])
    # (100000, 1) + (1, 100000) broadcasts to 10**10 elements: 40 GB, past int32 indexing.
    with pytest.raises(ShapeError, match=r"\(a\+b\).*10000000000 elements"):
        executor.run({a: np.ones((100000, 1)), b: np.ones((1, 100000))})


@pytest.mark.parametrize("offset_bytes", [0, 4, 16, 36])
def test_large_numpy_feeds_are_read_where_they_lie_at_any_element_offset(offset_bytes):
    # numpy allocates on 16-byte boundaries and TVM's kernels used to assume 64: a large
    # feed is now read in place by every kernel that takes it (a matmul and an elementwise
    # kernel here), wherever it starts. Rows of 128 floats keep every vector load on a
    # 64-byte step, where a kernel compiled with the old promise uses aligned loads (and
    # crashed on such a feed).
    from dlsys.runtime.executor import IN_PLACE_FEED_BYTES

    rng = np.random.default_rng(offset_bytes)
    x, w = ad.Variable("x"), ad.Variable("w")
    executor = ad.Executor([ad.relu_op(ad.matmul_op(x, w)), x * 2.0 + 1.0])
    x_val = misaligned(rng.standard_normal((300, 128)).astype("float32"), offset_bytes)
    assert x_val.nbytes >= IN_PLACE_FEED_BYTES
    kept = x_val.copy()
    w_val = rng.standard_normal((128, 37)).astype("float32")
    product, affine = executor.run({x: x_val, w: w_val}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(product, np.maximum(kept @ w_val, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(affine, kept * 2 + 1, **F32_TOL)
    assert x_val.ctypes.data in _storage_pointers(executor)
    np.testing.assert_array_equal(x_val, kept)  # read, never written
    # Nothing is kept from the last run's array: a new one at another offset gives its values.
    other = misaligned(-kept, (offset_bytes + 8) % 64)
    _, affine = executor.run({x: other, w: w_val}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(affine, -kept * 2 + 1, **F32_TOL)


def test_feeds_that_cannot_be_read_in_place_are_copied(monkeypatch):
    from dlsys.runtime import executor as executor_module

    monkeypatch.setattr(executor_module, "IN_PLACE_FEED_BYTES", 0)  # every array qualifies
    x = ad.Variable("x")
    executor = ad.Executor([x * 3.0])
    values = np.arange(12, dtype="float32").reshape(3, 4)
    read_only = values.copy()
    read_only.flags.writeable = False  # DLPack as TVM speaks it cannot mark it read-only
    unaligned = np.frombuffer(b"\0" + values.tobytes(), np.float32, 12, 1).reshape(3, 4)
    assert not unaligned.flags.aligned
    for array in (read_only, unaligned):
        (got,) = executor.run({x: array}, convert_to_numpy_ret_vals=True)
        np.testing.assert_array_equal(got, values * 3)
        assert executor._bound[x] is executor._prepared.feed_buffers[x]


def test_a_state_fed_as_numpy_is_updated_in_a_copy_not_in_the_callers_array(monkeypatch):
    from dlsys import nn
    from dlsys.ops.norm import running_statistic_op
    from dlsys.runtime import executor as executor_module

    monkeypatch.setattr(executor_module, "IN_PLACE_FEED_BYTES", 0)
    running = nn.Parameter(np.zeros(4, np.float32), "running")
    x = ad.Variable("x")
    executor = ad.Executor([running_statistic_op(running, x, "mean", 0.5)])
    running_val = np.ones(4, np.float32)
    x_val = np.arange(16, dtype=np.float32).reshape(2, 4, 1, 2)
    (got,) = executor.run({running: running_val, x: x_val}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got, 0.5 * 1 + 0.5 * x_val.mean(axis=(0, 2, 3)), **F32_TOL)
    np.testing.assert_array_equal(running_val, np.ones(4))
