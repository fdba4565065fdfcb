"""A training step's update made inside its executor's run (``Executor.attach_update``): the
same parameters, step for step, as the optimiser's own call after the run; a step its check
refuses updates nothing, in the native call as in the Python loop; a run nobody armed never
updates; clipping and a new batch size go back to the optimiser's own call."""

import math

import numpy as np
import pytest
from test_minimize import batch, linear_model

from dlsys.optim import SGD, Adam, StepRefused, TrainStep

STEPS = 6  # past the third run, where the executor compiles its native call


def _reference(make, feeds_of, steps):
    """The parameters after ``steps`` updates made by the optimiser itself after each run."""
    loss, x, y, params = linear_model()
    optimizer = make(params)
    step = optimizer.minimize(loss)
    for number in range(steps):
        values = step.executor.run(feeds_of(x, y, number))
        optimizer.step(values[1:])
    return [p.data.numpy() for p in params]


def _feeds(x, y, number):
    images, labels = batch(seed=number)
    return {x: images, y: labels}


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python-loop"])
@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.3, momentum=0.9),
                                  lambda p: Adam(p, lr=0.05)], ids=["momentum", "adam"])
def test_fused_steps_equal_the_optimisers_own_calls(monkeypatch, native, make):
    monkeypatch.setenv("DLSYS_NATIVE_RUN", native)
    loss, x, y, params = linear_model()
    optimizer = make(params)
    step = optimizer.minimize(loss)
    for number in range(STEPS):
        step(_feeds(x, y, number))
    assert step.executor.update_attached()
    assert (step.executor._prepared.native is not None) == (native == "1")
    assert optimizer.steps == STEPS
    for got, want in zip(params, _reference(make, _feeds, STEPS)):
        np.testing.assert_array_equal(got.data.numpy(), want)


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python-loop"])
def test_a_refused_fused_step_updates_nothing(monkeypatch, native):
    monkeypatch.setenv("DLSYS_NATIVE_RUN", native)
    loss, x, y, params = linear_model()
    optimizer = SGD(params, 0.1, momentum=0.9)
    step = TrainStep(optimizer, loss, divergence_factor=2.0)
    images, labels = batch()
    for _ in range(STEPS):
        step({x: images, y: labels})
    before = [p.data.numpy() for p in params]
    momentum = [t.numpy() for t in optimizer._state["momentum_buffer"]]
    for bad, reason in ((images * 1e4, "loss exploded"), (images * np.nan, "loss became nan")):
        with pytest.raises(StepRefused, match=reason):
            step({x: bad, y: labels})
        assert optimizer.steps == STEPS
        for p, b in zip(params, before):
            np.testing.assert_array_equal(p.data.numpy(), b)
        for t, m in zip(optimizer._state["momentum_buffer"], momentum):
            np.testing.assert_array_equal(t.numpy(), m)
    step({x: images, y: labels})  # and the next good batch updates again
    assert optimizer.steps == STEPS + 1


def test_a_run_not_armed_never_updates():
    loss, x, y, params = linear_model()
    step = SGD(params, 0.1).minimize(loss)
    feeds = _feeds(x, y, 0)
    for _ in range(STEPS):
        step(feeds)
    before = [p.data.numpy() for p in params]
    for _ in range(3):
        step.executor.run(feeds)  # the forward and backward pass alone, as a caller may
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data.numpy(), b)
    # An armed run whose limit no loss meets (NaN) updates nothing either.
    step.executor.arm_update(math.nan)
    step.executor.run(feeds)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data.numpy(), b)


def test_clipping_and_a_new_batch_size_take_the_optimisers_own_call():
    loss, x, y, params = linear_model()
    optimizer = SGD(params, 0.2)
    step = optimizer.minimize(loss)
    ref_loss, ref_x, ref_y, ref_params = linear_model()
    ref_optimizer = SGD(ref_params, 0.2)
    ref_step = ref_optimizer.minimize(ref_loss)
    plan = [(32, None)] * 4 + [(32, 0.05)] * 2 + [(32, None)] * 2 + [(7, None)] * 4
    for number, (rows, limit) in enumerate(plan):
        images, labels = batch(seed=number, rows=rows)
        step.max_grad_norm = limit
        step({x: images, y: labels})
        values = ref_step.executor.run({ref_x: images, ref_y: labels})
        ref_optimizer.step(values[1:], max_grad_norm=limit)
        for got, want in zip(params, ref_params):
            np.testing.assert_array_equal(got.data.numpy(), want.data.numpy())
    assert optimizer.steps == len(plan)
