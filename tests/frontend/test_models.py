"""Model specs and initialisation, and dlsys gradients against the numpy reference's."""

import numpy as np
import pytest
import tvm

from dlsys.data.batches import epoch_batches
from dlsys.data.mnist import Split
from dlsys.errors import TrainingError
from dlsys.frontend.models import build_model, init_params, param_shapes, seed_streams
from dlsys.frontend.trainer import Trainer
from dlsys.testing import numpy_reference as ref
from dlsys.testing.synthetic import synthetic_images


def test_param_shapes_follow_pytorch():
    assert param_shapes("logreg") == {"0.weight": (10, 784), "0.bias": (10,)}
    assert list(param_shapes("mlp").values()) == [(256, 784), (256,), (100, 256), (100,),
                                                  (10, 100), (10,)]
    assert list(param_shapes("mlp", (32,))) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert param_shapes("mlp") == {k: v.shape for k, v in build_model("mlp").state_dict().items()}
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        param_shapes("resnet")


def test_init_is_seeded_and_scaled():
    a, b, c = init_params("mlp", 0), init_params("mlp", 0), init_params("mlp", 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])
    assert all(v.dtype == np.float32 for v in a.values())
    # PyTorch's defaults for Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases too.
    assert np.abs(a["0.weight"]).max() <= 1 / np.sqrt(784)
    assert np.abs(a["4.weight"]).max() <= 1 / np.sqrt(100)
    assert 0 < np.abs(a["0.bias"]).max() <= 1 / np.sqrt(784)


def test_batches_cover_each_example_at_most_once():
    _, rng = seed_streams(0)
    batches = epoch_batches(rng, 105, 10)
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert len(np.unique(np.concatenate(batches))) == 100
    with pytest.raises(ValueError):
        epoch_batches(rng, 5, 10)


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_one_step_matches_the_reference(model):
    images, labels = synthetic_images(64, 5)
    x = images.reshape(64, 784).astype(np.float32) / 255
    y = np.eye(10, dtype=np.float32)[labels]
    params = init_params(model, 2)
    trainer = Trainer.for_model(model, 2, lr=0.2, batch_size=64, ctx=tvm.cpu(0))
    loss = trainer.train_step(x, labels)
    ref_loss, grads = ref.loss_and_grads(params, x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    after = trainer.params_numpy()
    for name, grad in grads.items():
        np.testing.assert_allclose(after[name], params[name] - np.float32(0.2) * grad,
                                   rtol=1e-4, atol=1e-6)


def test_evaluate_runs_the_last_smaller_batch():
    params = init_params("logreg", 0)
    trainer = Trainer.for_model("logreg", 0, lr=0.2, batch_size=32)
    images, labels = synthetic_images(70, 1)
    x = images.reshape(70, 784).astype(np.float32) / 255
    expected, _ = ref.forward(params, x)
    loss, accuracy, logits = trainer.evaluate(Split(x, labels))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert accuracy == np.mean(expected.argmax(axis=1) == labels)
    ref_loss, _ = ref.loss_and_grads(params, x, np.eye(10, dtype=np.float32)[labels])
    assert loss == pytest.approx(ref_loss, rel=1e-5)


def _trainer_state(trainer) -> dict:
    return {**{f"model {k}": v for k, v in trainer.model.state_dict().items()},
            **{f"optimiser {k}": v for k, v in trainer.optimizer.state_dict().items()},
            "counts": np.array([trainer.correct, trainer.seen])}


def _assert_same_state(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_compiling_and_a_refused_step_leave_the_cnn_as_it_was():
    # The cnn's batch norms update their running statistics in place during the forward pass,
    # before the loss can be checked.
    trainer = Trainer.for_model("cnn", 0, lr=1e-3, batch_size=8, optimizer="adam")
    fresh = _trainer_state(trainer)
    trainer.compile()
    _assert_same_state(_trainer_state(trainer), fresh)
    images, labels = synthetic_images(16, 3)
    x = images.reshape(16, 784).astype(np.float32) / 255
    trainer.train_step(x[:8], labels[:8])
    before = _trainer_state(trainer)
    poisoned = x[8:].copy()
    poisoned[1, 400] = np.nan
    with pytest.raises(TrainingError, match="became nan"):
        trainer.train_step(poisoned, labels[8:])
    _assert_same_state(_trainer_state(trainer), before)
    _, _, logits = trainer.evaluate(Split(x, labels))
    assert np.isfinite(logits).all()


def test_a_refused_first_batch_is_not_the_divergence_yardstick():
    trainer = Trainer.for_model("logreg", 0, lr=0.2, batch_size=8)
    images, labels = synthetic_images(8, 4)
    x = images.reshape(8, 784).astype(np.float32) / 255
    poisoned = x.copy()
    poisoned[0, 0] = np.nan
    with pytest.raises(TrainingError, match="became nan"):
        trainer.train_step(poisoned, labels)
    trainer.train_step(x, labels)
    with pytest.raises(TrainingError, match="loss exploded"):
        trainer.train_step(x * 1e6, labels)  # logits of about 1e5: a loss 1000 times the first
