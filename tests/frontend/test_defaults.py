"""Each model's default batch size and learning rate, as the README's accuracy table uses them:
the convolutional models train in batches of 256, and the cnn (batch norm) at a smaller SGD
rate than the dense models' 0.2, at which it blows up."""

from pathlib import Path

import pytest

from dlsys.frontend.trainer import TrainConfig, resolve_settings


@pytest.mark.parametrize("model, optimizer, batch, lr", [
    ("mlp", None, 1000, 0.2), ("logreg", "adam", 1000, 1e-3), ("lenet", None, 256, 0.2),
    ("lenet", "momentum", 256, 0.02), ("cnn", None, 256, 0.05), ("cnn", "momentum", 256, 0.005),
    ("cnn", "adam", 256, 1e-3),
])
def test_model_defaults(model, optimizer, batch, lr):
    settings = resolve_settings(TrainConfig(Path("unused"), model=model, optimizer=optimizer),
                                None, print)
    assert (settings["batch_size"], settings["lr"]) == (batch, lr)


def test_flags_win_over_model_defaults():
    config = TrainConfig(Path("unused"), model="cnn", batch_size=64, lr=0.3)
    settings = resolve_settings(config, None, print)
    assert (settings["batch_size"], settings["lr"]) == (64, 0.3)
