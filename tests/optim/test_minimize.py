"""optimizer.minimize(loss): a compiled training step that matches running the executor and
the optimiser by hand, and refuses what it cannot train."""

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.distributed import DistributedStep
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError, TrainingError
from dlsys.nn import functional as F
from dlsys.nn import init
from dlsys.ops.placeholder import Parameter
from dlsys.optim import SGD, Adam, StepLR


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


def conv_bn_dropout_model(seed=0):
    """A convolution, batch norm, dropout and a classifier: every kind of state a training
    graph updates in place (running statistics, a dropout seed) next to the parameters."""
    with init.using_generator(np.random.default_rng(seed)):
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                              nn.Dropout(0.3), nn.Linear(3 * 4 * 4, 3))
    x, y = ad.Variable("x"), ad.Variable("y")
    return model, F.cross_entropy(model(x), y), x, y


def every_state(model, optimizer, schedule) -> dict:
    """The model's parameters and buffers, the optimiser's rate, step count and moments, and
    the schedule's position, as arrays by name."""
    return {**{f"model {k}": v for k, v in model.state_dict().items()},
            **{f"optimiser {k}": v for k, v in optimizer.state_dict().items()},
            **{f"schedule {k}": np.array(v) for k, v in schedule.state_dict().items()}}


@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.1), lambda p: SGD(p, 0.1, momentum=0.9),
                                  lambda p: Adam(p, lr=0.01)], ids=["sgd", "momentum", "adam"])
@pytest.mark.parametrize("kind", ["minimize", "distributed"])
def test_a_refused_step_changes_no_state(make, kind):
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((8, 1, 6, 6)).astype(np.float32),
                "y": rng.integers(0, 3, 8).astype(np.float32)} for _ in range(2)]
    poisoned = dict(batches[1], x=batches[1]["x"].copy())
    poisoned["x"][2, 0, 3, 3] = np.nan

    def trained(first_steps):
        """A model, optimiser, schedule and step after one step on the first batch."""
        model, loss, x, y = conv_bn_dropout_model()
        optimizer = make(model.parameters())
        schedule = StepLR(optimizer, step_size=1, gamma=0.5)
        step = optimizer.minimize(loss) if kind == "minimize" else DistributedStep(optimizer, loss)
        for batch in first_steps:
            step({x: batch["x"], y: batch["y"]})
            schedule.step()
        return model, optimizer, schedule, lambda b: step({x: b["x"], y: b["y"]}), x

    model, optimizer, schedule, step, x = trained(batches[:1])
    before = every_state(model, optimizer, schedule)
    with pytest.raises(TrainingError, match="became nan"):
        step(poisoned)
    after = every_state(model, optimizer, schedule)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    # The next step is the one of a model that never saw the poisoned batch, dropout mask
    # included, and the eval-mode outputs are finite.
    twin, twin_optimizer, twin_schedule, twin_step, _ = trained(batches[:1])
    assert step(batches[1]) == twin_step(batches[1])
    for name, value in every_state(twin, twin_optimizer, twin_schedule).items():
        np.testing.assert_array_equal(every_state(model, optimizer, schedule)[name], value,
                                      err_msg=name)
    model.eval()
    (logits,) = ad.Executor([model(x)]).run({x: batches[0]["x"]}, convert_to_numpy_ret_vals=True)
    assert np.isfinite(logits).all()


def test_minimize_needs_parameter_nodes_and_a_node():
    loss, _, _, params = linear_model()
    with pytest.raises(ArgumentError, match="Parameter nodes"):
        SGD([p.data for p in params], 0.1).minimize(loss)
    with pytest.raises(ArgumentTypeError, match="loss must be a graph node"):
        SGD(params, 0.1).minimize("loss")
