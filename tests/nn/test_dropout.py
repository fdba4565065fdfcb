"""Dropout: its statistics, its mask shared with the gradient, a new mask each run (the seed
buffer updated in place by the graph), and the state-update rules of the passes."""

from __future__ import annotations

import numpy as np
import pytest

import dlsys
from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ArgumentError, DtypeError
from dlsys.ops.random import next_seed_op
from dlsys.passes.lower import Step
from dlsys.passes.memory_plan import order_problems


def _graph(p):
    dlsys.manual_seed(0)
    layer = nn.Dropout(p)
    x = ad.Variable("x")
    out = layer(x)
    upstream = ad.Variable("g")  # weights of the differentiated sum of the outputs
    return layer, x, out, ad.gradients(out * upstream, [x])[0], upstream


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keeps_the_expected_fraction_and_scales_the_rest(p):
    _, x, out, *_ = _graph(p)
    values = ad.Executor([out]).run({x: np.ones((200, 150), np.float32)},
                                    convert_to_numpy_ret_vals=True)[0]
    dropped = np.mean(values == 0)
    # 30000 Bernoulli draws: the dropped fraction's standard deviation is below 0.003.
    assert abs(dropped - p) < 0.015
    np.testing.assert_allclose(np.unique(values[values != 0]), [1 / (1 - p)], rtol=1e-6)


def test_new_mask_every_run_and_the_gradient_uses_the_forward_mask():
    layer, x, out, grad, g = _graph(0.5)
    executor = ad.Executor([out, grad])
    feeds = {x: np.ones((50, 40), np.float32),
             g: np.random.default_rng(0).normal(size=(50, 40)).astype(np.float32)}
    seed_before = layer.seed.numpy()[0]
    first, first_grad = executor.run(feeds, convert_to_numpy_ret_vals=True)
    second, second_grad = executor.run(feeds, convert_to_numpy_ret_vals=True)
    assert layer.seed.numpy()[0] == seed_before + 2  # advanced once per run
    assert np.mean(first != second) > 0.3
    for values, grads in ((first, first_grad), (second, second_grad)):
        np.testing.assert_allclose(grads, values * feeds[g], rtol=1e-6)


def test_eval_mode_and_p_zero_are_the_identity_and_p_one_drops_all():
    values = np.random.default_rng(1).normal(size=(6, 7)).astype(np.float32)
    layer, x, *_ = _graph(0.5)
    layer.eval()
    assert layer(x) is x
    assert nn.Dropout(0.0)(x) is x
    (dropped,) = ad.Executor([nn.Dropout(1.0)(x)]).run({x: values}, True)
    assert not dropped.any()


def test_a_fed_seed_gives_a_repeatable_mask():
    layer, x, out, *_ = _graph(0.5)
    executor = ad.Executor([out])
    feeds = {x: np.ones((30, 30), np.float32), layer.seed: np.array([7.0], np.float32)}
    first = executor.run(feeds, convert_to_numpy_ret_vals=True)[0]
    again = executor.run(feeds, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_array_equal(first, again)


def test_the_seed_is_state_saved_with_the_model(tmp_path):
    dlsys.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.25))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.seed"]
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    dlsys.save(model, tmp_path / "m.npz")
    loaded = dlsys.load(tmp_path / "m.npz")
    assert loaded[1].p == 0.25 and loaded.state_dict()["1.seed"] == model.state_dict()["1.seed"]


def test_a_state_of_another_dtype_is_refused_not_silently_copied():
    _, x, out, *_ = _graph(0.5)
    with pytest.raises(DtypeError, match="seed is updated in place"):
        ad.Executor([out], dtype="float64").run({x: np.ones((3, 3))})


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_bad_probabilities(p):
    with pytest.raises(ArgumentError):
        nn.Dropout(p)


def test_order_check_catches_a_read_of_an_overwritten_state():
    seed = nn.Parameter(np.zeros(1, np.float32), "seed")
    advanced = next_seed_op(seed)
    reader = ad.relu_op(seed)
    steps = [Step(advanced, (seed,), writes_state=seed), Step(reader, (seed,))]
    (problem,) = order_problems(steps)
    assert "reads seed after" in problem
    twice = [Step(advanced, (seed,), writes_state=seed),
             Step(next_seed_op(seed), (seed,), writes_state=seed)]
    assert any("updated twice" in p for p in order_problems(twice))
