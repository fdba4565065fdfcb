"""One native call per run (``runtime/native.py``) and the repeated-feeds path of the
executor: the same results as the kernel calls made one by one from Python, bit for bit, and
every change between runs (new values, a parameter assigned or rebound, an output fed back,
another dtype) seen by the next run."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import tvm
import tvm_ffi

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ArgumentError
from dlsys.nn import functional as F
from dlsys.runtime import executor as executor_module
from dlsys.runtime.native import ArgumentView, BufferParam, KernelCall, entry_function


def _training_graph(seed: int = 0):
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    x, y = ad.Variable("x"), ad.Variable("y")
    loss = F.cross_entropy(model(x), y)
    params = model.parameters()
    feeds = {x: rng.standard_normal((3, 1, 8, 8)).astype("float32"),
             y: rng.integers(0, 10, size=3)}
    return [loss, *ad.gradients(loss, params)], feeds


def _native_after_first_run(monkeypatch) -> None:
    monkeypatch.setattr(executor_module, "NATIVE_AFTER_RUNS", 0)


def test_a_plan_is_compiled_into_one_call_at_its_third_run():
    x = ad.Variable("x")
    executor = ad.Executor([ad.relu_op(x) + 1.0])
    values = np.arange(-2, 2, dtype="float32")
    for run in range(4):
        (out,) = executor.run({x: values * (run + 1)}, convert_to_numpy_ret_vals=True)
        np.testing.assert_array_equal(out, np.maximum(values * (run + 1), 0) + 1)
        assert (executor._prepared.native is not None) == (run >= 2)


def test_native_run_equals_the_python_loop_bit_for_bit(monkeypatch):
    _native_after_first_run(monkeypatch)
    nodes, feeds = _training_graph()
    native = ad.Executor(nodes)
    native_values = native.run(feeds, convert_to_numpy_ret_vals=True)
    assert native._prepared.native is not None
    monkeypatch.setenv("DLSYS_NATIVE_RUN", "0")
    looped = ad.Executor(nodes)
    looped_values = looped.run(feeds, convert_to_numpy_ret_vals=True)
    assert looped._prepared.native is None
    for a, b in zip(native_values, looped_values):
        np.testing.assert_array_equal(a, b)


def test_repeated_feeds_see_new_values_and_changed_parameters():
    rng = np.random.default_rng(1)
    layer = nn.Linear(6, 3)
    x = ad.Variable("x")
    out = layer(x)
    executor = ad.Executor([out], constants=layer.parameters())

    def expected(batch):
        weight, bias = (p.numpy() for p in layer.parameters())
        return batch @ weight.T + bias if weight.shape == (3, 6) else batch @ weight + bias

    for step in range(3):
        batch = rng.standard_normal((2, 6)).astype("float32")
        (value,) = executor.run({x: batch}, convert_to_numpy_ret_vals=True)
        np.testing.assert_allclose(value, expected(batch), rtol=1e-5, atol=1e-6)
        if step:
            assert executor.repeated_run is not None  # the repeated-feeds path served it
    # A parameter assigned in place, then one rebound to another tensor: both seen.
    weight = layer.parameters()[0]
    weight.assign(rng.standard_normal(weight.shape).astype("float32"))
    (value,) = executor.run({x: batch}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(value, expected(batch), rtol=1e-5, atol=1e-6)
    weight.data = tvm.runtime.tensor(rng.standard_normal(weight.shape).astype("float32"))
    (value,) = executor.run({x: batch}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(value, expected(batch), rtol=1e-5, atol=1e-6)


def test_repeated_feeds_fall_back_for_other_dtypes_and_the_executors_own_memory():
    x = ad.Variable("x")
    executor = ad.Executor([ad.relu_op(x) * 2.0])
    first = np.arange(-3, 3, dtype="float32").reshape(2, 3)
    (out,) = executor.run({x: first})
    np.testing.assert_array_equal(out.numpy(), np.maximum(first, 0) * 2)
    # A float64 array is converted, as on the first run.
    (out,) = executor.run({x: -first.astype("float64")})
    np.testing.assert_array_equal(out.numpy(), np.maximum(-first, 0) * 2)
    # The last output, fed back as a numpy view of the executor's memory, is read first.
    fed_back = np.from_dlpack(out)
    (out,) = executor.run({x: fed_back})
    np.testing.assert_array_equal(out.numpy(), np.maximum(-first, 0) * 4)
    # A slice of such a view too (its base is an array that does not own its memory).
    (out,) = executor.run({x: np.from_dlpack(out)[:]})
    np.testing.assert_array_equal(out.numpy(), np.maximum(-first, 0) * 8)


def _full_path_refused(*args):
    raise AssertionError("the run took the full path, not the repeated one")


def test_repeated_runs_read_large_feeds_where_they_lie(monkeypatch):
    # A feed of NATIVE_IN_PLACE_FEED_BYTES or more is handed to the native call as it lies,
    # a new array at every run: each run sees its own array, never an earlier one's.
    monkeypatch.setattr(executor_module, "NATIVE_IN_PLACE_FEED_BYTES", 64)
    rng = np.random.default_rng(2)
    x, w = ad.Variable("x"), ad.Variable("w")
    executor = ad.Executor([ad.relu_op(ad.matmul_op(x, w)) + 1.0])
    w_val = rng.standard_normal((8, 5)).astype("float32")
    for run in range(6):
        if run == 4:  # the native call exists: every run from here is a repeated one
            monkeypatch.setattr(executor, "_run", _full_path_refused)
        batch = rng.standard_normal((4, 8)).astype("float32")
        (out,) = executor.run({x: batch, w: w_val})
        np.testing.assert_allclose(out.numpy(), np.maximum(batch @ w_val, 0) + 1,
                                   rtol=1e-5, atol=1e-6)
        if run >= 3:  # the repeated path read the array in place
            assert executor._bound[x].data_ptr() == batch.ctypes.data
    monkeypatch.undo()
    # A read-only array cannot be read in place (DLPack cannot say so): copied, still right.
    frozen = rng.standard_normal((4, 8)).astype("float32")
    frozen.flags.writeable = False
    (out,) = executor.run({x: frozen, w: w_val}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(out, np.maximum(frozen @ w_val, 0) + 1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_place_bytes", [64, 1 << 20], ids=["large feed", "small feed"])
def test_an_array_fed_again_is_read_where_it_lies_and_seen_as_it_changes(monkeypatch,
                                                                         in_place_bytes):
    # A large feed is read where it lies at every run; a small one is copied, until the
    # same array comes twice in a row. Either way the kernels must see what the array
    # holds at each run: its values changed in place, its strides changed in place (numpy
    # 2.4 still allows it), another array in between, a read-only array.
    monkeypatch.setattr(executor_module, "NATIVE_IN_PLACE_FEED_BYTES", in_place_bytes)
    _native_after_first_run(monkeypatch)
    rng = np.random.default_rng(3)
    x, w = ad.Variable("x"), ad.Variable("w")
    executor = ad.Executor([ad.relu_op(ad.matmul_op(x, w)) + 1.0])
    w_val = rng.standard_normal((8, 5)).astype("float32")
    storage = rng.standard_normal(64).astype("float32")
    batch = storage[:32].reshape(4, 8)
    other = rng.standard_normal((4, 8)).astype("float32")
    frozen = rng.standard_normal((4, 8)).astype("float32")
    frozen.flags.writeable = False

    def check(array) -> None:
        (out,) = executor.run({x: array, w: w_val}, convert_to_numpy_ret_vals=True)
        np.testing.assert_allclose(out, np.maximum(array @ w_val, 0) + 1, rtol=1e-5,
                                   atol=1e-6)

    for array in (batch, batch, other, batch, batch, frozen, frozen, batch, batch, batch):
        check(array)
        batch[...] = rng.standard_normal((4, 8))
    assert executor._bound[x].data_ptr() == batch.ctypes.data  # read where it lies
    for _ in range(2):
        check(batch)
        storage[:] = rng.standard_normal(64)
    with pytest.warns(DeprecationWarning):
        batch.strides = (64, 4)  # the same array, now every other row of 16 floats
    assert not batch.flags.c_contiguous
    check(batch)
    check(batch)
    if in_place_bytes > 64:  # copied: the repeated path served it, with the feed buffer
        assert executor._bound[x] is executor._prepared.feed_buffers[x]


def test_the_native_call_checks_ids_and_refuses_before_any_kernel():
    # From the native call on, a repeated run's ids are checked inside it: an id out of
    # range is still named, and no kernel ran (an SGD step changes no parameter).
    from dlsys.errors import FeedError
    from dlsys.optim import SGD

    model = nn.Linear(6, 4)
    x, y = ad.Variable("x"), ad.Variable("y")
    step = SGD(model.parameters(), 0.1).minimize(F.cross_entropy(model(x), y))
    rng = np.random.default_rng(3)
    images = rng.standard_normal((5, 6)).astype("float32")
    labels = np.array([0, 3, 1, 2, 3])
    for _ in range(4):
        step({x: images, y: labels})
    assert step.executor._prepared.id_status is not None
    before = [p.numpy() for p in model.parameters()]
    for bad in (4, -1):
        wrong = labels.copy()
        wrong[2] = bad
        with pytest.raises(FeedError, match=f"id {bad} at \\(2,\\)"):
            step({x: images, y: wrong})
        for p, b in zip(model.parameters(), before):
            np.testing.assert_array_equal(p.numpy(), b)
    step({x: images, y: labels})  # the same feeds in range run again
    step({x: images, y: labels})
    # Fed twice in a row, the labels are read where they lie: an id changed there is
    # checked as well.
    assert step.executor._bound[y].data_ptr() == labels.ctypes.data
    before = [p.numpy() for p in model.parameters()]
    labels[2] = 7
    with pytest.raises(FeedError, match="id 7 at \\(2,\\)"):
        step({x: images, y: labels})
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)
    labels[2] = 1
    step({x: images, y: labels})
    assert step.executor._prepared.id_status[0] == 0


def test_a_dropped_plan_removes_its_kernels_from_the_global_table(monkeypatch):
    _native_after_first_run(monkeypatch)
    x = ad.Variable("x")
    executor = ad.Executor([ad.exp_op(x) + 1.0])
    executor.run({x: np.ones((2, 2), "float32")})
    names = [n for n in tvm_ffi.registry.list_global_func_names()
             if n.startswith("dlsys.native.")]
    assert names
    del executor
    gc.collect()
    left = set(tvm_ffi.registry.list_global_func_names())
    assert not left.intersection(names)


def test_entry_function_refuses_a_view_of_another_dtype():
    buffers = [BufferParam((4,), "float32")]
    call = KernelCall("k", (ArgumentView(0, 0, (4,), "int64"),))
    with pytest.raises(ArgumentError, match="int64 view of a float32 buffer"):
        entry_function(buffers, [call])


def _sgd_losses(steps: int) -> list[float]:
    from dlsys.optim import SGD

    rng = np.random.default_rng(2)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    for param in model.parameters():
        param.assign(rng.standard_normal(param.shape).astype("float32") * 0.3)
    x, y = ad.Variable("x"), ad.Variable("y")
    loss = F.cross_entropy(model(x), y)
    params = model.parameters()
    executor = ad.Executor([loss, *ad.gradients(loss, params)])
    optimizer = SGD(params, 0.5)
    data = rng.standard_normal((steps * 4, 8)).astype("float32")
    labels = rng.integers(0, 4, size=steps * 4)
    losses = []
    for step in range(steps):
        rows = slice(step * 4, step * 4 + 4)
        value, *grads = executor.run({x: data[rows], y: labels[rows]})
        losses.append(float(value.numpy()[0]))
        optimizer.step(grads)
    return losses


def test_a_training_loop_on_the_repeated_path_matches_the_full_path(monkeypatch):
    repeated = _sgd_losses(4)
    monkeypatch.setattr(ad.Executor, "_remember_feeds", lambda self, *args: None)
    full = _sgd_losses(4)
    assert repeated == full
    assert repeated[-1] < repeated[0]


def test_an_array_is_read_in_place_only_when_the_kernels_can_read_it():
    from dlsys.runtime.memory import in_place_tensor

    array = np.arange(12, dtype="float32").reshape(3, 4)
    tensor = in_place_tensor(array)
    assert tensor is not array and tensor.data_ptr() == array.ctypes.data
    frozen = array.copy()
    frozen.flags.writeable = False
    misaligned = np.frombuffer(np.zeros(64, np.uint8).data, dtype="float32", count=4, offset=2)
    for refused in (frozen, array[:, ::2], array.T, misaligned):
        assert in_place_tensor(refused) is refused


@pytest.mark.parametrize("view", [lambda a: a, lambda a: a[:], lambda a: a[:][:]],
                         ids=["view", "slice of a view", "slice of a slice"])
def test_repeated_runs_read_first_a_feed_viewing_the_executors_output(monkeypatch, view):
    # The first output's kernel writes its buffer before the second output's reads x: an
    # x read where it lies, in that buffer, would be read after it was overwritten.
    monkeypatch.setattr(executor_module, "NATIVE_IN_PLACE_FEED_BYTES", 64)
    x = ad.Variable("x")
    executor = ad.Executor([x + 1.0, x * 3.0])
    value = np.arange(32, dtype="float32").reshape(4, 8)
    for _ in range(4):
        plus_one, _ = executor.run({x: value.copy()})
    fed = view(np.from_dlpack(plus_one))
    expected = np.array(fed)
    plus_one, tripled = executor.run({x: fed})
    np.testing.assert_array_equal(tripled.numpy(), expected * 3)
