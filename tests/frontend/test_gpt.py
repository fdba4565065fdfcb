"""The character-level GPT end to end: ``dlsys train --model gpt`` on a small corpus (run
folder, metrics, resume), ``dlsys generate`` (text, the key/value cache's logits against the
whole forward pass), and the named errors of the model and the commands."""

import json
import random

import numpy as np
import pytest
from cli_runner import run_cli

import dlsys
from dlsys import autodiff as ad
from dlsys.errors import DataError, ShapeError
from dlsys.frontend.generate import CachedDecoder, FullDecoder, load_gpt, sample
from dlsys.frontend.trainer import TrainConfig, run_training
from dlsys.nn import init
from dlsys.nn.gpt import GPT

TINY = ["--context", "16", "--width", "16", "--heads", "2", "--layers", "2",
        "--batch-size", "4", "--steps-per-epoch", "3", "--val-size", "100", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    words = "the cat sat on a mat and a dog ran far from home to eat".split()
    chooser = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(" ".join(chooser.choice(words) for _ in range(400)))
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A two-epoch run of the tiny GPT, then resumed for a third."""
    out = tmp_path_factory.mktemp("runs") / "gpt"
    assert run_cli(["train", "--model", "gpt", "--data", str(corpus), "--epochs", "2",
                    "--out", str(out), *TINY]) == 0
    return out


def _tiny(seed=1, vocab=11, context=8):
    with init.using_generator(np.random.default_rng(seed)):
        return GPT(vocab, context=context, width=16, heads=2, layers=2)


def test_training_writes_a_run_folder_with_bits_per_character(trained):
    files = {p.name for p in trained.iterdir()}
    assert {"run.json", "checkpoint.npz", "metrics.json", "metrics.csv", "curves.png",
            "model.npz"} <= files
    settings = json.loads((trained / "run.json").read_text())
    assert settings["model"] == "gpt" and settings["context"] == 16
    assert settings["vocab"] == "".join(sorted(set(settings["vocab"])))
    assert settings["val_size"] == 100
    metrics = json.loads((trained / "metrics.json").read_text())
    rows = metrics["epochs"]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(len(row["batch_losses"]) == 3 for row in rows)
    assert rows[-1]["val_bpc"] == pytest.approx(rows[-1]["val_loss"] / np.log(2), rel=1e-4)
    assert metrics["val_bpc"] == rows[-1]["val_bpc"] and "test_acc" not in metrics
    model, vocab = load_gpt(trained / "model.npz")
    assert vocab.chars == settings["vocab"] and model.context == 16


def test_a_finished_run_resumes_for_more_epochs(trained, capsys):
    capsys.readouterr()
    assert run_cli(["train", "--out", str(trained), "--resume", "--epochs", "3",
                    "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "after epoch 2" in out and "epoch 3/3" in out
    rows = json.loads((trained / "metrics.json").read_text())["epochs"]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and rows[2].get("resumed") == 1


class _Stop(Exception):
    pass


def test_an_interrupted_run_resumed_ends_as_the_whole_run(corpus, tmp_path):
    def config(out, resume=False):
        return TrainConfig(out, resume=resume, progress=False, model="gpt", data=str(corpus),
                           epochs=3, context=16, width=16, heads=2, layers=2, batch_size=4,
                           steps_per_epoch=3, val_size=100)

    whole = run_training(config(tmp_path / "whole"), log=lambda line: None)

    def stop_at_epoch_2(line):
        if line.startswith("epoch 2/3"):  # logged before epoch 2's checkpoint is written
            raise _Stop

    with pytest.raises(_Stop):
        run_training(config(tmp_path / "broken"), log=stop_at_epoch_2)
    resumed = run_training(config(tmp_path / "broken", resume=True), log=lambda line: None)
    for name, value in whole.params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in whole.history]


def test_generate_prints_the_prompt_and_the_sampled_characters(trained, capsys):
    capsys.readouterr()
    assert run_cli(["generate", str(trained), "--prompt", "the ", "--tokens", "40",
                    "--top-k", "5", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    text = captured.out.rstrip("\n")
    assert text.startswith("the ") and len(text) == 44
    assert "characters/s with the key/value cache" in captured.err and "without it" in captured.err
    assert run_cli(["generate", str(trained), "--prompt", "the ", "--tokens", "40",
                    "--top-k", "5", "--seed", "3", "--no-cache"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == text  # the same logits, the same draws


def test_the_cache_gives_the_logits_of_the_whole_forward_pass():
    model = _tiny()
    ids = np.random.default_rng(0).integers(0, 11, (1, 8))
    x, positions = ad.Variable("ids"), ad.Variable("positions")
    model.eval()
    (full,) = ad.Executor([model(x, positions)]).run(
        {x: ids, positions: model.positions(8)}, convert_to_numpy_ret_vals=True)
    cached = CachedDecoder(model)
    for i in range(8):
        np.testing.assert_allclose(cached.push(int(ids[0, i])), full[0, i], atol=1e-5)
    # Past the context both restart from the window's last half, alike.
    plain = FullDecoder(model)
    cached.reset()
    tokens = np.random.default_rng(1).integers(0, 11, 30)
    for token in tokens:
        np.testing.assert_allclose(cached.push(int(token)), plain.push(int(token)), atol=1e-5)
    assert sample(cached, tokens[:3], 12, 0.8, 4, 5) == sample(plain, tokens[:3], 12, 0.8, 4, 5)


def test_named_errors(trained, capsys):
    capsys.readouterr()
    assert run_cli(["generate", str(trained), "--prompt", "Zebra!"]) == 2
    err = capsys.readouterr().err
    assert "the prompt has characters the model's vocabulary lacks: '!', 'Z'" in err
    assert run_cli(["eval", str(trained)]) == 2
    assert "sample it with: dlsys generate" in capsys.readouterr().err
    assert run_cli(["train", "--model", "mlp", "--context", "8"]) == 2
    assert "--context applies to --model gpt only" in capsys.readouterr().err
    assert run_cli(["train", "--model", "gpt", "--width", "10", "--heads", "3",
                    "--out", str(trained.parent / "bad")]) == 2
    assert "width 10 must be divisible by heads 3" in capsys.readouterr().err
    with pytest.raises(ShapeError, match="a sequence of 9 tokens is longer than the position "
                                         "table of 8"):
        _tiny().positions(9)
    path = trained.parent / "mlp.npz"
    dlsys.save(dlsys.nn.Sequential(dlsys.nn.Linear(4, 2)), path)
    with pytest.raises(DataError, match="not a character-level GPT's model file"):
        load_gpt(path)
