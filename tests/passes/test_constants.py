"""Executor(constants=...): values computed from constant parameters alone run once, the
constant matmul operands are packed once (``passes.prepack``), and every way a constant can
change (assign, a training step, a feed, a new tensor, ``refresh_constants``) is seen."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import tvm

from dlsys import autodiff as ad
from dlsys.errors import ArgumentTypeError
from dlsys.ops.linalg import PackPanelsOp
from dlsys.ops.placeholder import Parameter
from dlsys.optim import SGD
from dlsys.passes.memory_plan import verify_plan


@pytest.fixture(autouse=True)
def _no_search(monkeypatch):
    monkeypatch.setenv("DLSYS_TUNE", "0")


def dense_net(seed=0, dtype=np.float32, trans=True):
    """x (rows x 20) -> relu(x W1^T + b1) (36 wide) -> W2 (PyTorch's layout, or dlsys's with
    ``trans=False``): the logits node, x and the parameters."""
    rng = np.random.default_rng(seed)
    x = ad.Variable("x")
    w1 = Parameter((rng.standard_normal((36, 20) if trans else (20, 36)) * 0.3).astype(dtype),
                   name="W1")
    b1 = Parameter(rng.standard_normal(36).astype(dtype), name="b1")
    w2 = Parameter((rng.standard_normal((10, 36) if trans else (36, 10)) * 0.3).astype(dtype),
                   name="W2")
    h = ad.matmul_op(x, w1, trans_B=trans)
    h = ad.relu_op(ad.add_op(h, ad.broadcastto_op(b1, h)))
    return ad.matmul_op(h, w2, trans_B=trans), x, [w1, b1, w2]


def reference(x, params, trans=True):
    w1, b1, w2 = (p.numpy() for p in params)
    if not trans:
        w1, w2 = w1.T, w2.T
    return np.maximum(x @ w1.T + b1, 0) @ w2.T


def batch(rows=33, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((rows, 20)).astype(dtype)


@pytest.mark.parametrize("trans", [True, False])
@pytest.mark.parametrize("rows", [1, 33, 64])
def test_constant_executor_matches_plain_and_packs_the_weights(rows, trans):
    logits, x, params = dense_net(trans=trans)
    plain = ad.Executor([logits])
    folded = ad.Executor([logits], constants=params)
    images = batch(rows)
    for _ in range(3):  # the first run computes the constants, the next ones reuse them
        out = folded.run({x: images}, convert_to_numpy_ret_vals=True)[0]
        np.testing.assert_allclose(out, plain.run({x: images},
                                                  convert_to_numpy_ret_vals=True)[0],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out, reference(images, params, trans), rtol=1e-4,
                                   atol=1e-4)
    packed = [s for s in folded._prepared.steps if isinstance(s.output.op, PackPanelsOp)]
    # A row against weights stored along k is a matrix-vector product, which reads them
    # as they are: nothing to pack then.
    assert len(packed) == (0 if rows == 1 and trans else 2)
    prepared = folded._prepared
    assert prepared.first_per_run_call == len(packed)
    # The constants live outside the memory plan, which holds the per-run values soundly.
    hoisted, per_run = prepared.steps[:len(packed)], prepared.steps[len(packed):]
    assert not any(s.output in prepared.plan.storage_of for s in hoisted)
    assert verify_plan(per_run, prepared.shapes, set(folded.eval_node_list), prepared.plan,
                       provided=frozenset(s.output for s in hoisted)) == []


def folded_after_one_run():
    """An executor holding the net's parameters as constants, after its first run."""
    logits, x, params = dense_net()
    executor = ad.Executor([logits], constants=params)
    images = batch()
    executor.run({x: images})
    return executor, x, params, images


def output(executor, x, images, feeds=None):
    return executor.run({x: images, **(feeds or {})}, convert_to_numpy_ret_vals=True)[0]


def assert_current(out, images, params):
    """``out`` is the net's value for the parameters as they are now."""
    np.testing.assert_allclose(out, reference(images, params), rtol=1e-4, atol=1e-4)


def test_constant_steps_run_once_until_refreshed():
    executor, x, params, images = folded_after_one_run()
    old = reference(images, params)
    # Written behind dlsys's back: the packed copy is not made again...
    params[0].data.copyfrom(params[0].numpy() * -2.0)
    np.testing.assert_allclose(output(executor, x, images), old, rtol=1e-4, atol=1e-4)
    # ...until the caller says so.
    executor.refresh_constants()
    fresh = output(executor, x, images)
    assert_current(fresh, images, params)
    assert not np.allclose(fresh, old)


def test_assign_is_seen():
    executor, x, params, images = folded_after_one_run()
    params[2].assign(params[2].numpy() + 1.0)
    assert_current(output(executor, x, images), images, params)


def test_a_new_tensor_and_a_fed_value_are_seen():
    executor, x, params, images = folded_after_one_run()
    w1 = params[0]
    w1.data = tvm.runtime.tensor(w1.numpy() * 0.5)
    assert_current(output(executor, x, images), images, params)
    # A value fed for a constant is used for that run; the next run reads the parameter.
    fed = np.random.default_rng(5).standard_normal(w1.shape).astype(np.float32)
    out = output(executor, x, images, {w1: fed})
    w1_value = w1.numpy()
    w1.data.copyfrom(fed)
    assert_current(out, images, params)
    w1.assign(w1_value)
    assert_current(output(executor, x, images), images, params)


def _train_step_loss(logits, params):
    labels = ad.Variable("labels")
    return ad.softmaxcrossentropy_op(logits, labels), labels


def test_training_updates_reach_an_inference_executor():
    logits, x, params = dense_net()
    inference = ad.Executor([logits], constants=params)
    images = batch()
    labels = np.eye(10, dtype=np.float32)[np.arange(len(images)) % 10]
    before = output(inference, x, images)
    loss, y = _train_step_loss(logits, params)
    # Both ways of training: a compiled step updating the parameters in place in its
    # graph, and the optimiser's own update kernel fed the gradients by hand.
    SGD(params, 0.5).minimize(loss)({x: images, y: labels})
    after = output(inference, x, images)
    assert_current(after, images, params)
    assert not np.allclose(after, before)
    grads = ad.Executor(ad.gradients(loss, params)).run({x: images, y: labels})
    SGD(params, 0.5).step(grads)
    again = output(inference, x, images)
    assert_current(again, images, params)
    assert not np.allclose(again, after)


def _training_setup():
    """A dense net, an executor holding its parameters as constants, a batch, its labels
    and the loss a step minimises."""
    logits, x, params = dense_net()
    inference = ad.Executor([logits], constants=params)
    images = batch()
    labels = np.eye(10, dtype=np.float32)[np.arange(len(images)) % 10]
    loss, y = _train_step_loss(logits, params)
    return x, y, params, inference, images, labels, loss


def test_updates_made_inside_the_step_reach_an_inference_executor():
    # From its second call a step makes the optimiser's update inside its executor's run
    # (``Executor.attach_update``), counted once for all the parameters (``UpdateCount``):
    # every such update must still reach an executor holding them as constants.
    x, y, params, inference, images, labels, loss = _training_setup()
    step = SGD(params, 0.1).minimize(loss)
    previous = output(inference, x, images)
    for _ in range(5):
        step({x: images, y: labels})
        current = output(inference, x, images)
        assert_current(current, images, params)
        assert not np.allclose(current, previous)
        previous = current
    assert step.executor.update_was_armed  # the last updates were made inside the run


def test_an_optimiser_gone_leaves_its_updates_in_the_versions():
    # Optimisers made again and again over the same parameters (a learning-rate search)
    # must neither grow what every version sums nor take their updates away when they go.
    x, y, params, inference, images, labels, loss = _training_setup()
    for _ in range(3):
        step = SGD(params, 0.1).minimize(loss)
        for _ in range(4):
            step({x: images, y: labels})
        versions = [p.version for p in params]
        del step
        gc.collect()
        assert [p.version for p in params] == versions
        assert_current(output(inference, x, images), images, params)
    assert not any(p._update_counts for p in params)


def test_a_value_asked_for_is_computed_every_run():
    # relu(W2) depends on a constant alone, but it is returned to the caller, who may keep
    # it: it is not folded (and so not reused stale).
    logits, x, params = dense_net()
    w2 = params[2]
    asked = ad.relu_op(w2)
    executor = ad.Executor([logits, asked], constants=params)
    images = batch()
    executor.run({x: images})
    w2.data.copyfrom(w2.numpy() - 1.0)
    out = executor.run({x: images}, convert_to_numpy_ret_vals=True)[1]
    np.testing.assert_allclose(out, np.maximum(w2.numpy(), 0))


def test_float64():
    logits, x, params = dense_net(dtype=np.float64)
    executor = ad.Executor([logits], constants=params)
    images = batch(dtype=np.float64)
    out = executor.run({x: images}, convert_to_numpy_ret_vals=True)[0]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, reference(images, params), rtol=1e-10, atol=1e-10)


def test_constants_must_be_parameters():
    logits, x, params = dense_net()
    with pytest.raises(ArgumentTypeError, match="constants must be parameters.*x"):
        ad.Executor([logits], constants=[*params, x])


def test_constants_must_be_a_list():
    logits, x, params = dense_net()
    with pytest.raises(ArgumentTypeError, match="constants must be a list of parameters, got "
                                                "Parameter"):
        ad.Executor([logits], constants=params[0])
