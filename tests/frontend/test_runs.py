"""A run's folder and settings: refusing to overwrite, one run at a time, ``--resume`` that
restores every recorded setting, optimisers and schedules, divergence, eval and predict."""

import json

import numpy as np
import pytest
from cli_runner import run_cli as _run

from dlsys.frontend import run_folder, trainer
from dlsys.testing.synthetic import synthetic_images


def _train(data_dir, out, *extra):
    return _run(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "50", "--out", str(out), "--no-progress", *extra])


def _err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_an_earlier_run_is_never_overwritten_silently(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(data_dir, out, "--epochs", "1") == 0
    (out / "notes.txt").write_text("mine")
    before = (out / "checkpoint.npz").read_bytes()
    assert _train(data_dir, out, "--epochs", "1") == 2
    assert "holds an earlier run" in _err(capsys)
    assert (out / "checkpoint.npz").read_bytes() == before
    assert _train(data_dir, out, "--epochs", "1", "--seed", "5", "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["seed"] == 5
    assert (out / "notes.txt").read_text() == "mine"  # only dlsys's own files are replaced


def test_a_second_run_into_a_folder_in_use_is_refused(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    with run_folder.locked(out):
        assert _train(data_dir, out, "--epochs", "1") == 2
    assert "in use by another dlsys run" in _err(capsys)
    assert _train(data_dir, out, "--epochs", "1") == 0  # released with the first run


def test_resume_restores_every_recorded_setting(capsys, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = trainer.Trainer.train_epoch

    def interrupted_in_epoch_2(self, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "train_epoch", interrupted_in_epoch_2)
    assert _train(data_dir, out, "--epochs", "3", "--seed", "4") == 130
    monkeypatch.setattr(trainer.Trainer, "train_epoch", real)
    capsys.readouterr()
    # Resumed exactly as the interrupt's hint says: no flags but --resume and --out.
    assert _run(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "training logreg" in stdout and "batch 50" in stdout and "seed 4" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2, 3]  # the recorded target
    assert metrics["resumed_at"] == [1]  # marked on the plot
    assert all(0 <= row["train_acc"] <= 1 for row in metrics["epochs"])


def test_resume_before_any_checkpoint_keeps_the_recorded_model(capsys, data_dir, tmp_path,
                                                               monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(trainer.Trainer, "train_epoch",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert _train(data_dir, out, "--epochs", "2") == 130
    monkeypatch.undo()
    assert not (out / "checkpoint.npz").exists()
    capsys.readouterr()
    assert _run(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "training logreg" in stdout and "batch 50" in stdout


def test_flags_that_contradict_the_recorded_run(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(data_dir, out, "--epochs", "1") == 0
    assert _run(["train", "--resume", "--out", str(out), "--batch-size", "10"]) == 2
    assert "--batch-size 10 contradicts the run being resumed (batch_size 50)" in _err(capsys)
    assert _run(["train", "--resume", "--out", str(out), "--epochs", "2",
                 "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "epochs: 1 -> 2" in stdout and "epoch 2/2" in stdout


def test_an_exploding_loss_fails_the_run(capsys, data_dir, tmp_path):
    assert _train(data_dir, tmp_path / "run", "--epochs", "2", "--lr", "50") == 1
    assert "loss exploded" in _err(capsys) or "loss became" in _err(capsys)


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "adamw"])
def test_every_optimizer_trains_and_is_recorded(capsys, data_dir, tmp_path, optimizer):
    out = tmp_path / "run"
    assert _train(data_dir, out, "--epochs", "2", "--optimizer", optimizer,
                  "--weight-decay", "0.01", "--lr-schedule", "cosine", "--warmup", "1") == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["optimizer"] == optimizer and settings["warmup"] == 1
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert history[-1]["loss"] < history[0]["batch_losses"][0]


def test_learning_rate_schedules():
    settings = {"lr": 1.0, "epochs": 7, "warmup": 1, "lr_schedule": "constant"}
    assert [trainer.learning_rate_at(e, settings) for e in (1, 2, 7)] == [0.5, 1.0, 1.0]
    step = [trainer.learning_rate_at(e, {**settings, "lr_schedule": "step"}) for e in range(2, 8)]
    assert step == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = [trainer.learning_rate_at(e, {**settings, "lr_schedule": "cosine"})
              for e in range(2, 8)]
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] > 0


def test_eval_and_predict_a_saved_model(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(data_dir, out, "--epochs", "3") == 0
    capsys.readouterr()
    png = tmp_path / "confusion.png"
    assert _run(["eval", str(out / "model.npz"), "--data", str(data_dir),
                 "--confusion-png", str(png)]) == 0
    stdout = capsys.readouterr().out
    test_acc = json.loads((out / "metrics.json").read_text())["test_acc"]
    assert f"accuracy {100 * test_acc:.2f}%" in stdout
    assert "confusion matrix" in stdout and png.read_bytes()[:4] == b"\x89PNG"

    from PIL import Image

    images, labels = synthetic_images(3, 11)
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"digit{i}.png")
        paths.append(str(tmp_path / f"digit{i}.png"))
    np.save(tmp_path / "digit.npy", images[0].astype(np.float32) / 255)
    assert _run(["predict", str(out / "model.npz"), *paths, str(tmp_path / "digit.npy")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("%" in line for line in lines)
    assert [line.split(": ")[1].split(" (")[0] for line in lines[:3]] == [str(v) for v in labels]

    (tmp_path / "notes.png").write_text("not an image")
    assert _run(["predict", str(out / "model.npz"), str(tmp_path / "notes.png")]) == 2
    assert "notes.png: not an image" in _err(capsys)
    assert _run(["predict", str(tmp_path / "missing.npz"), paths[0]]) == 2
    assert "no such model file" in _err(capsys)


@pytest.mark.parametrize("model", ["lenet", "cnn"])
def test_convolutional_models_train_save_and_predict(capsys, data_dir, tmp_path, model):
    out = tmp_path / "run"
    assert _run(["train", "--model", model, "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "50", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["model"] == model
    np.save(tmp_path / "image.npy", np.full((28, 28), 0.5, np.float32))
    capsys.readouterr()
    assert _run(["predict", str(out / "model.npz"), str(tmp_path / "image.npy")]) == 0
    assert "image.npy:" in capsys.readouterr().out
    assert _run(["train", "--model", model, "--hidden", "10", "--out", str(tmp_path / "x"),
                 "--data", str(data_dir)]) == 2
    assert "hidden" in _err(capsys)


def _lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def test_without_out_each_run_gets_a_folder_of_its_own(capsys, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "logreg-2").mkdir(parents=True)  # empty: free
    folders = []
    for _ in range(3):
        assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
                     "--batch-size", "50", "--epochs", "1", "--no-progress"]) == 0
        (start,) = _lines(capsys.readouterr().out, "training logreg")
        folders.append(start.rsplit(", into ", 1)[1])
    assert folders == ["runs/logreg", "runs/logreg-2", "runs/logreg-3"]
    assert all((tmp_path / folder / "model.npz").is_file() for folder in folders)


def test_an_explicit_out_holding_a_run_shows_the_commands_that_continue_or_replace_it(
        capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(data_dir, out, "--epochs", "1") == 0
    assert _train(data_dir, out, "--epochs", "1") == 2
    line = _err(capsys)
    command = (f"dlsys train --model logreg --data {data_dir} --val-size 100 --batch-size 50 "
               f"--out {out} --no-progress --epochs 1")
    assert f"continue it with: dlsys train --out {out} --resume;" in line
    assert f"replace it with: {command} --overwrite;" in line


def test_resume_without_out_continues_the_latest_run(capsys, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _run(["train", "--resume", "--no-progress"]) == 2
    assert _err(capsys) == ("dlsys: error: no run of logreg or mlp or lenet or cnn or gpt in "
                            "runs/ to resume; name the run folder with --out")
    common = ["--data", str(data_dir), "--val-size", "100", "--batch-size", "50",
              "--epochs", "1", "--no-progress"]
    assert _run(["train", "--model", "logreg", *common]) == 0
    assert _run(["train", "--model", "logreg", *common, "--seed", "3"]) == 0
    capsys.readouterr()
    assert _run(["train", "--resume", "--epochs", "2", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "seed 3, into runs/logreg-2" in stdout and "epoch 2/2" in stdout
    assert _run(["train", "--model", "mlp", "--resume", "--no-progress"]) == 2
    assert "no run of mlp in runs/ to resume" in _err(capsys)


def test_an_interrupt_prints_the_command_that_resumes(capsys, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer.Trainer, "train_epoch",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "50", "--epochs", "2", "--no-progress"]) == 130
    assert _err(capsys) == ("dlsys: interrupted; continue with: dlsys train --out runs/logreg "
                            "--resume")


def test_resuming_a_finished_run_says_so_and_rewrites_nothing(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(data_dir, out, "--epochs", "1") == 0
    written = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    capsys.readouterr()
    assert _run(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert (f"{out}: the run finished its 1 epochs; nothing to resume. To train it on, give "
            f"the new total: dlsys train --out {out} --resume --epochs 11 trains epochs 2-11 "
            f"from its checkpoint") in stdout
    assert "test acc" not in stdout
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == written


def test_the_start_line_and_the_plot_name_the_schedule(capsys, data_dir, tmp_path, monkeypatch):
    from dlsys.frontend import report

    titles = []
    real = report.plot_curves
    monkeypatch.setattr(report, "plot_curves", lambda out, history, title, summary: (
        titles.append(title), real(out, history, title, summary))[1])
    assert _train(data_dir, tmp_path / "run", "--epochs", "2", "--lr", "0.1",
                  "--lr-schedule", "cosine", "--warmup", "1") == 0
    assert "lr 0.1 (cosine schedule, 1 warm-up epoch)" in capsys.readouterr().out
    assert titles == ["dlsys logreg, sgd lr 0.1 (cosine schedule, 1 warm-up epoch), batch 50"]
