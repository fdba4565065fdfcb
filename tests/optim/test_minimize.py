"""optimizer.minimize(loss): a compiled training step that matches running the executor and
the optimiser by hand, and refuses what it cannot train."""

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError, TrainingError
from dlsys.ops.placeholder import Parameter
from dlsys.optim import SGD, Adam


def linear_model(seed=0):
    """Logistic regression 5 -> 3: the loss node, its placeholders and its Parameters."""
    rng = np.random.default_rng(seed)
    x, y = ad.Variable("x"), ad.Variable("y")
    w = Parameter(rng.standard_normal((5, 3)).astype(np.float32) * 0.1, name="W")
    b = Parameter(np.zeros(3, np.float32), name="b")
    logits = ad.matmul_op(x, w)
    logits = ad.add_op(logits, ad.broadcastto_op(b, logits))
    return ad.softmaxcrossentropy_op(logits, y), x, y, [w, b]


def batch(seed=1, rows=32):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((rows, 5)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[(images[:, 0] > 0).astype(int) + (images[:, 1] > 0.5)]
    return images, labels


@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.5, momentum=0.9),
                                  lambda p: Adam(p, lr=0.05)], ids=["momentum", "adam"])
def test_loss_decreases(make):
    loss, x, y, params = linear_model()
    step = make(params).minimize(loss)
    images, labels = batch()
    losses = [step({x: images, y: labels}) for _ in range(30)]
    assert all(isinstance(v, float) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_matches_executor_and_step_by_hand():
    loss, x, y, params = linear_model()
    step = Adam(params, lr=0.05, weight_decay=0.01).minimize(loss)
    by_hand_loss, hx, hy, by_hand = linear_model()
    optimizer = Adam(by_hand, lr=0.05, weight_decay=0.01)
    executor = ad.Executor([by_hand_loss, *ad.gradients(by_hand_loss, by_hand)])
    for seed in range(4):
        images, labels = batch(seed)
        value = step({x: images, y: labels})
        expected, *grads = executor.run({hx: images, hy: labels})
        optimizer.step(grads)
        assert value == float(expected.numpy()[0])
    for p, q in zip(params, by_hand):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_a_last_smaller_batch_rebinds_the_gradients():
    loss, x, y, params = linear_model()
    step = SGD(params, 0.1).minimize(loss)
    for rows in (32, 32, 7, 32):
        assert np.isfinite(step(dict(zip((x, y), batch(rows=rows)))))


def test_non_scalar_loss_is_refused_before_any_update():
    _, x, _, params = linear_model()
    before = [p.numpy() for p in params]
    step = SGD(params, 0.1).minimize(ad.matmul_op(x, params[0]))
    with pytest.raises(ShapeError, match=r"shape \(32, 3\); it must be a scalar of shape \(1,\)"):
        step({x: batch()[0]})
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_non_finite_loss_leaves_the_parameters():
    loss, x, y, params = linear_model()
    before = [p.numpy() for p in params]
    optimizer = Adam(params)
    step = optimizer.minimize(loss)
    images, labels = batch()
    images[3, 2] = np.nan
    with pytest.raises(TrainingError, match="became nan"):
        step({x: images, y: labels})
    assert optimizer.steps == 0
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_minimize_needs_parameter_nodes_and_a_node():
    loss, _, _, params = linear_model()
    with pytest.raises(ArgumentError, match="Parameter nodes"):
        SGD([p.data for p in params], 0.1).minimize(loss)
    with pytest.raises(ArgumentTypeError, match="loss must be a graph node"):
        SGD(params, 0.1).minimize("loss")
