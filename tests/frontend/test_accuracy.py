"""dlsys training reaches the numpy reference's accuracy on real Fashion-MNIST data.

Same initial parameters, same data order, same loss and optimizer: only float rounding
differs (TVM's summation order against BLAS's), which can flip a ReLU at an activation within
1e-7 of zero and so lets the two runs drift apart slowly; one epoch stays well within a point.
"""

import numpy as np
import pytest

from dlsys.data.batches import epoch_batches
from dlsys.data.mnist import DEFAULT_DATA_DIR, Split, load_dataset
from dlsys.frontend.models import seed_streams
from dlsys.frontend.trainer import Trainer
from dlsys.testing import numpy_reference as ref

pytestmark = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(),
                                reason=f"Fashion-MNIST is not installed in {DEFAULT_DATA_DIR}")


@pytest.fixture(scope="module")
def subset():
    data = load_dataset(DEFAULT_DATA_DIR)
    return Split(data.train.images[:10000], data.train.labels[:10000]), data.val


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_one_epoch_matches_the_reference(subset, model):
    train, val = subset
    lr, batch_size, seed = 0.1, 100, 0
    expected = ref.train(model, train, val, epochs=1, batch_size=batch_size, lr=lr, seed=seed)
    trainer = Trainer.for_model(model, seed, lr, batch_size)
    _, rng = seed_streams(seed)
    loss = np.mean(trainer.train_epoch(1, train, epoch_batches(rng, len(train), batch_size),
                                       progress=False))
    accuracy = trainer.accuracy(val)
    assert accuracy > 0.7, "one epoch on 10000 images should reach 70%"
    assert abs(accuracy - expected.history[0]["val_acc"]) < 0.01
    assert loss == pytest.approx(expected.history[0]["loss"], rel=1e-2)
    assert np.isfinite(loss)


def test_lenet_two_epochs_match_pytorch(subset):
    # Issue 10's bar: LeNet-5 trained by dlsys for 2 epochs lands within a point of PyTorch's
    # accuracy from the same initial weights and data order (PyTorch only as the reference).
    # Adam, because plain SGD at a rate that learns in 2 epochs passes through loss spikes
    # that turn rounding differences (summation order) into different trajectories; with
    # Adam the two losses agree to 4 digits for the first 80 steps.
    torch = pytest.importorskip("torch")
    from dlsys.frontend.models import init_params
    from dlsys.testing.torch_reference import torch_model

    train, val = subset
    lr, batch_size, seed = 1e-3, 100, 0
    trainer = Trainer.for_model("lenet", seed, lr, batch_size, optimizer="adam")
    model = torch_model("lenet", init_params("lenet", seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    _, rng = seed_streams(seed)
    images = train.images.reshape(-1, 1, 28, 28)
    for epoch in (1, 2):
        batches = epoch_batches(rng, len(train), batch_size)
        trainer.train_epoch(epoch, train, batches, progress=False)
        for idx in batches:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(images[idx])),
                                                     torch.from_numpy(train.labels[idx]).long())
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = model(torch.from_numpy(val.images.reshape(-1, 1, 28, 28))).numpy()
    expected = float(np.mean(logits.argmax(axis=1) == val.labels))
    accuracy = trainer.accuracy(val)
    print(f"\nLeNet-5, 2 epochs on 10000 images: dlsys {accuracy:.4f}, PyTorch {expected:.4f}")
    assert accuracy > 0.7, "two epochs on 10000 images should reach 70%"
    assert abs(accuracy - expected) < 0.01
