"""TrainStep, the one step of minimize(), the trainer and data-parallel training: its
gradient-reduce hook runs between the backward pass and the update, and its divergence check
refuses like the finiteness check, changing nothing."""

import numpy as np
import pytest
from test_minimize import batch, linear_model

from dlsys.optim import SGD, GradientReduce, StepRefused, TrainStep


class Halve(GradientReduce):
    """Halves the loss and gradients after each run, counting its calls."""

    contiguous = True

    def __init__(self):
        self.calls = 0

    def reduce(self, executor):
        self.calls += 1
        buffer = executor.contiguous_buffer()
        buffer.copyfrom(buffer.numpy() / 2)


def test_the_hook_runs_between_backward_and_update():
    loss, x, y, params = linear_model()
    hook = Halve()
    step = TrainStep(SGD(params, 0.2), loss, reduce=hook)
    ref_loss, ref_x, ref_y, ref_params = linear_model()
    ref_step = SGD(ref_params, 0.1).minimize(ref_loss)  # half the gradients: half the rate
    images, labels = batch()
    for _ in range(3):
        got = step({x: images, y: labels})
        want = ref_step({ref_x: images, ref_y: labels})
        assert got == pytest.approx(want / 2, rel=1e-6)
    assert hook.calls == 3
    for mine, ref in zip(params, ref_params):
        np.testing.assert_allclose(mine.data.numpy(), ref.data.numpy(), rtol=1e-5, atol=1e-7)


def test_divergence_is_refused_and_changes_nothing():
    loss, x, y, params = linear_model()
    optimizer = SGD(params, 0.1)
    step = TrainStep(optimizer, loss, extra=[loss], divergence_factor=2.0)
    images, labels = batch()
    value, (extra,) = step.run({x: images, y: labels})
    assert step.first_loss == value == float(extra.numpy()[0])
    before = [p.data.numpy() for p in params]
    with pytest.raises(StepRefused, match="loss exploded") as refused:
        step({x: images * 1e4, y: labels})
    assert refused.value.reason.startswith("loss exploded to")
    assert optimizer.steps == 1
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data.numpy(), b)


def test_the_divergence_limit_follows_its_yardstick_and_factor():
    # The limit is kept computed for the fast path: setting either input moves it.
    loss, x, y, params = linear_model()
    step = TrainStep(SGD(params, 1e-9), loss, divergence_factor=2.0)  # the loss barely moves
    images, labels = batch()
    first = step({x: images, y: labels})
    louder = {x: images * 30, y: labels}
    with pytest.raises(StepRefused, match="loss exploded"):
        step(louder)
    step.first_loss = None  # as the language-model trainer does after its dry run
    big = step(louder)
    assert big > 2 * first and step.first_loss == big
    step.divergence_factor = None  # finiteness alone
    step({x: images * 1e3, y: labels})
    step.divergence_factor = 1.0
    with pytest.raises(StepRefused, match="loss exploded"):
        step({x: images * 1e3, y: labels})
