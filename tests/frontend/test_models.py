"""Model specs and initialisation, and dlsys gradients against the numpy reference's."""

import numpy as np
import pytest
import tvm

from dlsys.data.batches import epoch_batches
from dlsys.frontend.models import init_params, param_shapes, seed_streams
from dlsys.frontend.trainer import Trainer
from dlsys.testing import numpy_reference as ref
from dlsys.testing.synthetic import synthetic_images


def test_param_shapes():
    assert param_shapes("logreg") == {"W1": (784, 10), "b1": (10,)}
    assert list(param_shapes("mlp").values()) == [(784, 256), (256,), (256, 100), (100,),
                                                  (100, 10), (10,)]
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        param_shapes("cnn")


def test_init_is_seeded_and_scaled():
    a, b, c = init_params("mlp", 0), init_params("mlp", 0), init_params("mlp", 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W1"], c["W1"])
    assert all(v.dtype == np.float32 for v in a.values())
    assert np.abs(a["W1"]).max() <= np.sqrt(6 / 784)  # He-uniform before a ReLU
    assert np.abs(a["W3"]).max() <= np.sqrt(6 / 110)  # Glorot-uniform at the output
    assert not a["b1"].any()


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
    trainer = Trainer(model, params, lr=0.2, batch_size=64, ctx=tvm.cpu(0))
    loss = trainer.train_step(x, y)
    ref_loss, grads = ref.loss_and_grads(params, x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    after = trainer.params_numpy()
    for name, grad in grads.items():
        np.testing.assert_allclose(after[name], params[name] - np.float32(0.2) * grad,
                                   rtol=1e-4, atol=1e-6)


def test_predict_pads_the_last_batch():
    params = init_params("logreg", 0)
    trainer = Trainer("logreg", params, lr=0.2, batch_size=32)
    x = synthetic_images(70, 1)[0].reshape(70, 784).astype(np.float32) / 255
    expected, _ = ref.forward(params, x)
    np.testing.assert_allclose(trainer.predict(x), expected, rtol=1e-4, atol=1e-5)
