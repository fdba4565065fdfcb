"""Learning-rate schedules against PyTorch's documented formulas, their state, and the rate
they set reaching the kernel."""

import math

import numpy as np
import optim_reference as ref
import pytest
import tvm

from dlsys.errors import ArgumentError, ArgumentTypeError, DlsysError, ShapeError
from dlsys.optim import SGD, Adam, CosineAnnealingLR, LinearWarmup, SequentialLR, StepLR

BASE = 0.4


def optimizer(lr=BASE):
    params, _ = ref.random_problem(1, shapes=[(4, 3)])
    return SGD([tvm.runtime.tensor(p) for p in params], lr)


def rates(scheduler, epochs):
    seen = [scheduler.optimizer.lr]
    for _ in range(epochs):
        scheduler.step()
        seen.append(scheduler.get_last_lr())
    return seen


def test_step_lr():
    got = rates(StepLR(optimizer(), step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose(got, [BASE * 0.5 ** (e // 3) for e in range(11)], rtol=1e-15)


def test_cosine_annealing_down_to_eta_min_and_back():
    got = rates(CosineAnnealingLR(optimizer(), T_max=8, eta_min=0.01), 12)
    expected = [0.01 + (BASE - 0.01) * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(13)]
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert got[8] == pytest.approx(0.01) and got[12] > got[8]


def test_cosine_annealing_may_reach_zero():
    got = rates(CosineAnnealingLR(optimizer(), T_max=4), 4)
    assert got[-1] == pytest.approx(0, abs=1e-16)


def test_linear_warmup():
    got = rates(LinearWarmup(optimizer(), warmup_steps=4, start_factor=0.25), 7)
    expected = [BASE * (0.25 + 0.75 * min(e, 4) / 4) for e in range(8)]
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert got[0] == pytest.approx(0.1) and got[4:] == [pytest.approx(BASE)] * 4


def test_scheduled_rates_reach_the_kernel():
    params, grads = ref.random_problem(6)
    adam = Adam([tvm.runtime.tensor(p) for p in params], lr=0.05)
    schedule = StepLR(adam, step_size=2, gamma=0.3)
    lrs = []
    for g in grads:
        lrs.append(adam.lr)
        adam.step([tvm.runtime.tensor(x) for x in g])
        schedule.step()
    assert lrs == pytest.approx([0.05, 0.05, 0.015, 0.015, 0.0045, 0.0045])
    for got, want in zip(adam.params, ref.adam(params, grads, lrs)[-1]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda o: StepLR(o, 2, 0.5),
    lambda o: CosineAnnealingLR(o, 5, 0.001),
    lambda o: LinearWarmup(o, 3, 0.1),
], ids=["step", "cosine", "warmup"])
def test_state_dict_round_trip(make):
    first = make(optimizer())
    for _ in range(4):
        first.step()
    resumed = make(optimizer())
    resumed.load_state_dict({k: np.asarray(v) for k, v in first.state_dict().items()})
    assert resumed.optimizer.lr == first.optimizer.lr
    assert rates(resumed, 3) == rates(first, 3)


@pytest.mark.parametrize("make, error, words", [
    (lambda o: StepLR(o, 0), ArgumentError, "step_size must be positive"),
    (lambda o: StepLR(o, 2.5), ArgumentTypeError, "step_size must be an integer"),
    (lambda o: StepLR(o, 2, gamma=-0.5), ArgumentError, "gamma must be positive"),
    (lambda o: StepLR(o, 2, gamma=float("nan")), ArgumentError, "gamma"),
    (lambda o: CosineAnnealingLR(o, 0), ArgumentError, "T_max must be positive"),
    (lambda o: CosineAnnealingLR(o, True), ArgumentTypeError, "T_max"),
    (lambda o: CosineAnnealingLR(o, 5, eta_min=-1), ArgumentError, "eta_min"),
    (lambda o: LinearWarmup(o, -3), ArgumentError, "warmup_steps"),
    (lambda o: LinearWarmup(o, 3, start_factor=0), ArgumentError, "start_factor"),
    (lambda o: LinearWarmup(o, 3, start_factor=1.5), ArgumentError, "start_factor"),
    (lambda o: StepLR("sgd", 3), ArgumentTypeError, "optimizer"),
])
def test_bad_arguments(make, error, words):
    target = optimizer()
    with pytest.raises(error, match=words):
        make(target)
    assert target.lr == BASE


@pytest.mark.parametrize("state, error", [
    ({"base_lr": 0.1}, ShapeError),
    ({"base_lr": 0.1, "last_epoch": 2, "gamma": 3}, ShapeError),
    ({"base_lr": -0.1, "last_epoch": 2}, ArgumentError),
    ({"base_lr": 0.1, "last_epoch": 1.5}, ArgumentError),
    ({"base_lr": "0.1", "last_epoch": 1}, ArgumentTypeError),
    ([0.1, 2], ShapeError),
])
def test_bad_scheduler_state(state, error):
    schedule = StepLR(optimizer(), 2)
    schedule.step()
    with pytest.raises(error):
        schedule.load_state_dict(state)
    assert schedule.state_dict() == {"base_lr": BASE, "last_epoch": 1}
    assert schedule.optimizer.lr == BASE


def test_sequential_warmup_then_cosine():
    target = optimizer()
    warmup = LinearWarmup(target, warmup_steps=3, start_factor=0.5)
    cosine = CosineAnnealingLR(target, T_max=6, eta_min=0.02)
    # Made after the warm-up lowered the rate, the cosine still starts from the initial one.
    assert cosine.base_lr == BASE
    got = rates(SequentialLR(target, [warmup, cosine], milestones=[3]), 9)
    expected = ([BASE * (0.5 + 0.5 * e / 3) for e in range(3)]
                + [0.02 + (BASE - 0.02) * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(7)])
    np.testing.assert_allclose(got, expected, rtol=1e-15)


def test_sequential_state_round_trip_and_bad_arguments():
    def make(target):
        return SequentialLR(target, [StepLR(target, 1, 0.5), CosineAnnealingLR(target, 4)],
                            [2])

    first = make(optimizer())
    for _ in range(3):
        first.step()
    resumed = make(optimizer(lr=0.9))
    resumed.load_state_dict(first.state_dict())
    assert rates(resumed, 3) == rates(first, 3)
    target = optimizer()
    step = StepLR(target, 2)
    for schedulers, milestones in [([], []), ([step], [2]), ([step, step], [0]),
                                   ([step, step, step], [3, 2]),
                                   ([step, StepLR(optimizer(), 2)], [2])]:
        with pytest.raises(DlsysError, match="SequentialLR"):
            SequentialLR(target, schedulers, milestones)
