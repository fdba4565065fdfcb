"""Optimiser state: saved after k steps and loaded into a fresh optimiser, training goes on
exactly as without the interruption; a bad state dict is refused whole."""

import numpy as np
import optim_reference as ref
import pytest

from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.optim import SGD, Adam, AdamW

MAKERS = {
    "sgd": lambda p: SGD(p, 0.1),
    "momentum": lambda p: SGD(p, 0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
    "nesterov": lambda p: SGD(p, 0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: AdamW(p, lr=0.01),
}



def train(optimizer, grads_per_step):
    for grads in grads_per_step:
        optimizer.step(ref.tensors(grads))
    return [p.numpy() for p in optimizer.params]


@pytest.mark.parametrize("name", MAKERS)
def test_resumed_training_is_identical(name, tmp_path):
    params, grads = ref.random_problem(6)

    def started():
        optimizer = MAKERS[name](ref.tensors(params))
        optimizer.lr = optimizer.lr / 2  # as a schedule would: the state must restore it
        return optimizer, train(optimizer, grads[:3])

    uninterrupted, _ = started()
    expected = train(uninterrupted, grads[3:])

    first, half = started()
    np.savez(tmp_path / "state.npz", **first.state_dict())  # numpy files keep it exactly
    resumed = MAKERS[name](ref.tensors(half))
    resumed.load_state_dict(dict(np.load(tmp_path / "state.npz")))
    assert resumed.lr == first.lr and resumed.steps == 3
    for got, want in zip(train(resumed, grads[3:]), expected):
        np.testing.assert_array_equal(got, want)


def test_state_dict_names_and_contents():
    params, grads = ref.random_problem(2)
    optimizer = Adam(ref.tensors(params))
    train(optimizer, grads)
    state = optimizer.state_dict()
    assert set(state) == {"lr", "step"} | {f"{n}.{i}" for n in ("exp_avg", "exp_avg_sq")
                                           for i in range(len(params))}
    assert float(state["step"]) == 2 and float(state["lr"]) == 1e-3
    assert (state["exp_avg_sq.0"] > 0).all()
    # Plain SGD keeps no buffer, as in PyTorch.
    assert set(SGD(ref.tensors(params), 0.1).state_dict()) == {"lr", "step"}


def bad_states():
    params, _ = ref.random_problem(1)
    good = Adam(ref.tensors(params)).state_dict()

    def changed(**updates):
        state = dict(good)
        for key, value in updates.items():
            if value is None:
                del state[key]
            else:
                state[key] = value
        return state

    return [
        ("missing", changed(**{"exp_avg.1": None, "step": None}), "missing keys"),
        ("unexpected", changed(extra=np.zeros(1)), "unexpected keys ['extra']"),
        ("shape", changed(**{"exp_avg.0": np.zeros((5, 3))}), "exp_avg.0: shape (5, 3)"),
        ("nan", changed(**{"exp_avg_sq.2": np.full((2, 3, 4), np.nan)}), "not finite"),
        ("negative", changed(**{"exp_avg_sq.1": -np.ones(7)}), "negative"),
        ("strings", changed(lr=np.array("fast")), "lr: not an array of real numbers"),
        ("fractional step", changed(step=np.array(2.5)), "whole number"),
        ("negative step", changed(step=np.array(-1.0)), "whole number"),
        ("zero lr is allowed, negative not", changed(lr=np.array(-0.1)), "lr must be"),
    ]


@pytest.mark.parametrize("state, message", [(s, m) for _, s, m in bad_states()],
                         ids=[name for name, _, _ in bad_states()])
def test_bad_state_is_refused_and_changes_nothing(state, message):
    params, grads = ref.random_problem(2)
    optimizer = Adam(ref.tensors(params), lr=0.02)
    train(optimizer, grads[:1])
    before = optimizer.state_dict()
    with pytest.raises(ShapeError, match="Adam.load_state_dict") as err:
        optimizer.load_state_dict(state)
    assert message in str(err.value)
    after = optimizer.state_dict()
    assert set(after) == set(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_all_problems_listed_at_once():
    params, _ = ref.random_problem(1)
    optimizer = SGD(ref.tensors(params), 0.1, momentum=0.5)
    state = optimizer.state_dict()
    del state["momentum_buffer.0"]
    state["momentum_buffer.1"] = np.zeros(3)
    with pytest.raises(ShapeError) as err:
        optimizer.load_state_dict(state)
    assert "missing keys ['momentum_buffer.0']" in str(err.value)
    assert "momentum_buffer.1: shape (3,), expected (7,)" in str(err.value)


def test_state_dict_must_be_a_dict():
    params, _ = ref.random_problem(1)
    with pytest.raises(ArgumentTypeError, match="dict"):
        SGD(ref.tensors(params), 0.1).load_state_dict([("lr", 0.1)])
