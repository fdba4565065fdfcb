"""dlsys.nn modules: structure, state dicts, modes, and layers against numpy."""

from __future__ import annotations

import numpy as np
import pytest

import dlsys
from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ArgumentError, ArgumentTypeError, FeedError, ShapeError
from dlsys.nn import functional as F


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))


def test_names_shapes_and_order_follow_pytorch():
    model = mlp()
    assert [(n, p.shape) for n, p in model.named_parameters()] == [
        ("1.weight", (7, 12)), ("1.bias", (7,)), ("3.weight", (3, 7)), ("3.bias", (3,))]
    assert list(model.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert model[1].weight.name == "1.weight"  # graph nodes and errors name the path
    assert repr(model).splitlines()[2] == "  (1): Linear(in_features=12, out_features=7, bias=True)"


def test_default_initialisation_bounds_and_seed():
    dlsys.manual_seed(3)
    a = nn.Linear(400, 50).state_dict()
    dlsys.manual_seed(3)
    b = nn.Linear(400, 50).state_dict()
    c = nn.Linear(400, 50).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["weight"], c["weight"])
    bound = 1 / np.sqrt(400)
    assert np.abs(a["weight"]).max() <= bound and np.abs(a["weight"]).max() > 0.9 * bound
    assert np.abs(a["bias"]).max() <= bound


def test_forward_matches_numpy_and_parameters_are_bound():
    model = mlp()
    x = ad.Variable("x")
    images = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)
    (got,) = ad.Executor([model(x)]).run({x: images}, convert_to_numpy_ret_vals=True)
    s = model.state_dict()
    h = np.maximum(images.reshape(5, 12) @ s["1.weight"].T + s["1.bias"], 0)
    np.testing.assert_allclose(got, h @ s["3.weight"].T + s["3.bias"], rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_and_changes_seen_by_built_executors():
    model, other = mlp(), mlp()
    x = ad.Variable("x")
    executor = ad.Executor([other(x)])
    images = np.ones((2, 12), dtype=np.float32)
    before = executor.run({x: images}, convert_to_numpy_ret_vals=True)[0]
    other.load_state_dict(model.state_dict())
    after = executor.run({x: images}, convert_to_numpy_ret_vals=True)[0]
    (want,) = ad.Executor([model(x)]).run({x: images}, convert_to_numpy_ret_vals=True)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, want)


def test_load_state_dict_lists_every_problem_and_writes_nothing():
    model = mlp()
    before = model.state_dict()
    bad = dict(before)
    del bad["1.bias"]
    bad["extra"] = np.zeros(2)
    bad["3.weight"] = np.zeros((7, 3))
    with pytest.raises(ShapeError) as caught:
        model.load_state_dict(bad)
    message = str(caught.value)
    assert "1.bias" in message and "extra" in message and "3.weight" in message
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    bad = dict(before, **{"3.weight": np.zeros((7, 3))})
    with pytest.raises(ShapeError, match="3.weight"):
        model.load_state_dict(bad, strict=False)
    model.load_state_dict({"1.bias": np.ones(7)}, strict=False)
    assert model.state_dict()["1.bias"].tolist() == [1.0] * 7


def test_train_and_eval_set_every_child():
    model = mlp()
    assert model.eval() is model and not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_gradients_of_module_parameters_match_finite_differences():
    dlsys.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    x, labels = ad.Variable("x"), ad.Variable("labels")
    loss = F.cross_entropy(model(x), labels)
    params = model.parameters()
    executor = ad.Executor([loss, *ad.gradients(loss, params)], dtype="float64")
    feeds = {x: np.random.default_rng(1).normal(size=(5, 4)), labels: np.array([0, 1, 1, 0, 1])}
    _, *grads = executor.run(feeds, convert_to_numpy_ret_vals=True)
    forward = ad.Executor([loss], dtype="float64")
    for param, grad in zip(params, grads):
        values = param.numpy().astype(np.float64)
        numeric = np.zeros_like(values)
        for index in np.ndindex(values.shape):
            total = []
            for step in (1e-6, -1e-6):
                shifted = values.copy()
                shifted[index] += step
                total.append(forward.run({**feeds, param: shifted},
                                         convert_to_numpy_ret_vals=True)[0][0])
            numeric[index] = (total[0] - total[1]) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7, err_msg=param.name)


def test_cross_entropy_takes_indices_or_one_hot_and_flags_bad_indices():
    logits, labels = ad.Variable("logits"), ad.Variable("labels")
    loss = F.cross_entropy(logits, labels)
    executor = ad.Executor([loss])
    values = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    indices = np.array([2, 0, 1, 1])
    by_index = executor.run({logits: values, labels: indices}, True)[0]
    by_rows = executor.run({logits: values, labels: np.eye(3)[indices]}, True)[0]
    shifted = values - values.max(1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(4), indices].mean()
    np.testing.assert_allclose([by_index[0], by_rows[0]], [expected] * 2, rtol=1e-5)
    # Integer indices are checked where they are fed (PyTorch raises too); indices fed as
    # floats cannot be, so a bad one makes the loss NaN.
    for bad in ([2, 0, 3, 1], [2, 0, -1, 1]):
        with pytest.raises(FeedError, match=r"id (3|-1) at \(2,\) is out of range"):
            executor.run({logits: values, labels: np.array(bad)})
    for bad in ([2, 0, 3, 1], [2, 0, -1, 1], [2, 0, 0.5, 1]):
        assert np.isnan(executor.run({logits: values, labels: np.array(bad, dtype=float)},
                                     True)[0][0])
    with pytest.raises(ShapeError, match="class indices"):
        executor.run({logits: values, labels: np.zeros((4, 2))})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("as_rows", [False, True], ids=["indices", "one-hot"])
@pytest.mark.parametrize("with_gradient", [False, True])
def test_cross_entropy_with_masked_classes_is_finite(dtype, as_rows, with_gradient):
    # Attention and constrained decoding mask classes with -inf logits: while the target's
    # logit is finite, the loss and its gradient are (PyTorch's with class indices too; with
    # one-hot rows PyTorch gives NaN, from 0 * -inf, where dlsys counts 0 log 0 as 0).
    logits, labels = ad.Variable("logits"), ad.Variable("labels")
    loss = F.cross_entropy(logits, labels)
    executor = ad.Executor([loss, *ad.gradients(loss, [logits])] if with_gradient else [loss])
    values = np.random.default_rng(3).normal(size=(4, 5)).astype(dtype)
    values[0, 1] = values[2, [0, 3]] = values[3, :4] = -np.inf  # row 3: only the target
    indices = np.array([0, 4, 1, 4])
    got = executor.run({logits: values, labels: np.eye(5)[indices] if as_rows else indices},
                       convert_to_numpy_ret_vals=True)
    finite = np.where(np.isinf(values), -1e30, values)  # the same softmax, without infinities
    softmax = np.exp(finite - finite.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    expected_loss = -np.log(softmax[np.arange(4), indices]).mean()
    np.testing.assert_allclose(got[0], [expected_loss], rtol=1e-5)
    if with_gradient:
        np.testing.assert_allclose(got[1], (softmax - np.eye(5)[indices]) / 4, atol=1e-7)


@pytest.mark.parametrize("make, error", [
    (lambda: nn.Linear(0, 3), ArgumentError),
    (lambda: nn.Linear(2.5, 3), ArgumentTypeError),
    (lambda: nn.Linear(2, 3, bias="yes"), ArgumentTypeError),
    (lambda: nn.Sequential(nn.ReLU(), "relu"), ArgumentTypeError),
    (lambda: nn.ReLU()(np.ones(3)), ArgumentTypeError),
    (lambda: dlsys.manual_seed(-1), ArgumentTypeError),
])
def test_bad_arguments_are_named_errors(make, error):
    with pytest.raises(error):
        make()


def test_mse_loss_and_tanh_match_numpy_with_gradients():
    prediction, target = ad.Variable("prediction"), ad.Variable("target")
    loss = F.mse_loss(nn.Tanh()(prediction), target)
    grad = ad.gradients(loss, [prediction])[0]
    rng = np.random.default_rng(4)
    p, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    got_loss, got_grad = ad.Executor([loss, grad], dtype="float64").run(
        {prediction: p, target: t}, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got_loss, [np.mean((np.tanh(p) - t) ** 2)], rtol=1e-12)
    expected = 2 * (np.tanh(p) - t) * (1 - np.tanh(p) ** 2) / p.size
    np.testing.assert_allclose(got_grad, expected, rtol=1e-10)
