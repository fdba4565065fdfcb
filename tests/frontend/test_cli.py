"""``dlsys train`` end to end on a small synthetic data set, and its one-line error exits."""

import importlib.metadata
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from cli_runner import run_cli as _run

from dlsys.frontend.checkpoint import load_checkpoint
from dlsys.frontend.cli import main
from dlsys.testing.synthetic import write_idx_dataset


def _last_stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("flags, complaint", [
    (["--model", "resnet"], "invalid choice: 'resnet'"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
    (["--batch-size", "-5"], "--batch-size: must be a positive integer, got -5"),
    (["--lr", "0"], "--lr: must be a positive number"),
    (["--lr", "-0.1"], "--lr: must be a positive number"),
    (["--lr", "nan"], "--lr: must be a positive number"),
    (["--lr", "fast"], "--lr: must be a positive number, got 'fast'"),
    (["--val-size", "-1"], "--val-size: must be a non-negative integer"),
    (["--seed", "-1"], "--seed: must be a non-negative integer"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_exit_2(capsys, flags, complaint):
    assert _run(["train", *flags]) == 2
    assert complaint in _last_stderr_line(capsys)


def test_no_command_exits_2(capsys):
    assert _run([]) == 2
    assert "COMMAND" in _last_stderr_line(capsys)


def test_bare_dlsys_prints_the_whole_help(capsys):
    assert _run([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: dlsys") and "--version" in err
    assert "train a model on MNIST-format data" in err and "Traceback" not in err


def test_version_is_the_installed_packages(capsys):
    assert _run(["--version"]) == 0
    assert capsys.readouterr().out == f"dlsys {importlib.metadata.version('dlsys')}\n"


def test_train_help_points_at_no_source_code(capsys):
    assert _run(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR" in help_text
    assert "dlsys." not in help_text and ".py" not in help_text


def _progress_of(argv, monkeypatch) -> bool:
    """The ``progress`` setting that ``dlsys train argv`` hands the trainer."""
    from dlsys.frontend import trainer

    seen = []
    monkeypatch.setattr(trainer, "run_training", lambda config, log: seen.append(config))
    assert _run(argv) == 0
    return seen[0].progress


def test_progress_bars_follow_the_terminal_unless_asked(monkeypatch, tmp_path):
    out = ["train", "--out", str(tmp_path)]
    # Under pytest's capture stderr is no terminal, as in a log or a pipe.
    assert _progress_of(out, monkeypatch) is False
    assert _progress_of([*out, "--progress"], monkeypatch) is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert _progress_of(out, monkeypatch) is True
    assert _progress_of([*out, "--no-progress"], monkeypatch) is False


def test_python_m_dlsys_trains_and_logs_no_progress_frames(data_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "dlsys", "train", "--model", "logreg",
                             "--data", str(data_dir), "--batch-size", "50", "--epochs", "1",
                             "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout and "test acc" in result.stdout
    # stderr is a pipe here: a progress bar would have written frames separated by \r.
    assert "\r" not in result.stderr and "\r" not in result.stdout


def test_asked_for_progress_bars_draw_frames(capsys, data_dir, tmp_path):
    assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--batch-size", "50",
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--progress"]) == 0
    assert "\r" in capsys.readouterr().err


def test_val_size_0_trains_on_every_image(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "0",
                 "--batch-size", "100", "--epochs", "2", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "(300 train / 0 val / 60 test)" in stdout and "val acc" not in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert all("val_acc" not in row for row in metrics["epochs"])
    assert 0 <= metrics["test_acc"] <= 1


def test_a_small_data_set_trains_with_the_default_split(capsys, data_dir, tmp_path):
    # 300 training images: the default hold-out is a sixth of them, not 10000.
    assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--batch-size", "50",
                 "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert "(250 train / 50 val / 60 test)" in capsys.readouterr().out


def test_a_single_idx_file_as_data_exits_2_saying_what_is_expected(capsys, tmp_path):

    data = write_idx_dataset(tmp_path / "mnist", num_train=20, num_test=10, gz=True)
    path = data / "train-images-idx3-ubyte.gz"
    assert _run(["train", "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    line = _last_stderr_line(capsys)
    assert line.startswith(f"dlsys: error: {path}: a single IDX file; expected a folder")


def test_batch_larger_than_training_set(capsys, data_dir, tmp_path):
    assert _run(["train", "--data", str(data_dir), "--val-size", "100", "--batch-size", "201",
                 "--out", str(tmp_path)]) == 2
    line = _last_stderr_line(capsys)
    assert line.startswith("dlsys: error:") and "batch size 201" in line and "200" in line


def test_bad_data_path(capsys, tmp_path):
    assert _run(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert str(tmp_path / "missing") in _last_stderr_line(capsys)


def test_unwritable_out(capsys, data_dir, tmp_path):
    # A path below a regular file cannot be created, even by root.
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"
    assert _run(["train", "--data", str(data_dir), "--out", str(out)]) == 2
    line = _last_stderr_line(capsys)
    assert "not writable" in line and str(out) in line


def test_train_writes_every_output(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "20", "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "epoch 1/2  loss" in stdout and "epoch 2/2" in stdout and "test acc" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["settings"]["model"] == "logreg" and 0 <= metrics["test_acc"] <= 1
    assert (out / "metrics.csv").read_text().startswith("epoch,loss,epoch_time_s,val_acc")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with np.load(out / "params.npz") as params:
        assert sorted(params.files) == ["0.bias", "0.weight"]
        final = params["0.weight"]
    np.testing.assert_array_equal(load_checkpoint(out / "checkpoint.npz").params["0.weight"],
                                  final)
    assert (out / "model.npz").exists() and json.loads((out / "run.json").read_text())[
        "model"] == "logreg"


def test_memory_plan_summary_and_debug_table(capsys, data_dir, tmp_path):
    assert _run(["train", "--model", "mlp", "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "20", "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--no-progress", "--debug-memory"]) == 0
    stdout = capsys.readouterr().out
    summary = next(line for line in stdout.splitlines() if line.startswith("memory plan:"))
    assert "buffers" in summary and "peak live" in summary
    # The table lists every step with its storage id, and names the fused matmul kernels.
    table = stdout.split(summary, 1)[1].split("epoch 1/1", 1)[0]
    assert "storage" in table and "fused matmul+bias_add+relu" in table
    assert sum(1 for line in table.splitlines() if "fused matmul" in line) == 5


def test_nan_loss_stops_and_keeps_the_last_checkpoint(capsys, data_dir, tmp_path):
    common = ["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
              "--batch-size", "20", "--out", str(tmp_path), "--no-progress"]
    assert _run([*common, "--epochs", "1"]) == 0
    good = load_checkpoint(tmp_path / "checkpoint.npz")
    capsys.readouterr()
    assert _run([*common, "--epochs", "3", "--resume", "--lr", "1e38"]) == 1
    line = _last_stderr_line(capsys)
    assert line.startswith("dlsys: training failed: loss became")
    assert "epoch 2, batch" in line and "checkpoint of epoch 1 kept" in line
    kept = load_checkpoint(tmp_path / "checkpoint.npz")
    assert kept.epoch == 1
    np.testing.assert_array_equal(kept.params["0.weight"], good.params["0.weight"])


def test_resume_with_another_model_exits_2(capsys, data_dir, tmp_path):
    common = ["--data", str(data_dir), "--val-size", "100", "--batch-size", "50",
              "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    assert _run(["train", "--model", "logreg", *common]) == 0
    assert _run(["train", "--model", "mlp", "--resume", *common]) == 2
    assert "model 'logreg'" in _last_stderr_line(capsys)


def test_console_script_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dlsys.frontend.cli", "train", "--data",
                             str(tmp_path / "missing"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr


@pytest.mark.parametrize("lr, complaint", [
    ("1e39", "--lr: must be at most 3.403e+38, the largest float32, got 1e39"),
    ("1e-50", "--lr: must be at least 1.175e-38: smaller rates round to zero in float32"),
    ("inf", "--lr: must be a positive number"),
])
def test_learning_rate_float32_cannot_hold_exits_2(capsys, lr, complaint):
    assert _run(["train", "--lr", lr]) == 2
    assert complaint in _last_stderr_line(capsys)


@pytest.fixture(scope="module")
def good_run(data_dir, tmp_path_factory):
    """The output folder of a one-epoch logreg run, to copy and spoil."""
    out = tmp_path_factory.mktemp("good-run")
    assert main(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "50", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    return out


def _spoiled_checkpoint(good_run, tmp_path, change):
    from dlsys.frontend.checkpoint import save_checkpoint

    checkpoint = load_checkpoint(good_run / "checkpoint.npz")
    change(checkpoint)
    save_checkpoint(tmp_path / "checkpoint.npz", checkpoint)


@pytest.mark.parametrize("change, words", [
    (lambda c: c.config.update(batch_size=-7), "setting batch_size must be a positive integer"),
    (lambda c: c.config.update(batch_size="abc"), "setting batch_size"),
    (lambda c: c.config.update(model="resnet"), "unknown model 'resnet'"),
    (lambda c: c.params.pop("0.weight"), "missing ['0.weight']"),
    (lambda c: c.params.update({"0.bias": c.params["0.bias"].reshape(1, 10)}),
     "parameter 0.bias must be float32 of shape (10,)"),
    (lambda c: setattr(c, "epoch", 10**12), "epoch 1000000000000 needs one metrics row"),
    (lambda c: setattr(c, "epoch", -1), "epoch must be a positive integer"),
    (lambda c: setattr(c, "rng_state", {"bit_generator": "PCG64"}), "RNG state"),
    (lambda c: setattr(c, "metrics", [{"epoch": "one"}]), "metrics row 1"),
])
def test_unusable_checkpoint_exits_2_in_one_line(capsys, data_dir, good_run, tmp_path, change,
                                                 words):
    _spoiled_checkpoint(good_run, tmp_path, change)
    capsys.readouterr()
    assert _run(["train", "--data", str(data_dir), "--val-size", "100", "--epochs", "3",
                 "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    line = _last_stderr_line(capsys)
    assert line.startswith("dlsys: error:") and str(tmp_path / "checkpoint.npz") in line
    assert words in line


@pytest.mark.parametrize("where", ["root", "home", "above home", "temp"])
def test_out_that_is_not_a_run_folder_exits_2(capsys, tmp_path, monkeypatch, where):
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    out = {"root": "/", "home": "~", "above home": str(tmp_path / "users"),
           "temp": tempfile.gettempdir()}[where]
    # Missing data: were the folder taken, the run would stop before writing anything there.
    assert _run(["train", "--out", out, "--data", str(tmp_path / "missing")]) == 2
    line = _last_stderr_line(capsys)
    assert f"output directory {out} is" in line and "not a run folder" in line


def test_a_run_keeps_the_users_dot_tmp_files(capsys, data_dir, tmp_path):
    users = [tmp_path / ".tmp-draft", tmp_path / ".tmp-checkpoint.npz.x1"]
    for path in users:
        path.write_text("mine")
    assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "50", "--epochs", "1", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert all(path.read_text() == "mine" for path in users)


@pytest.mark.parametrize("data", ["/dev/zero", "/dev/null"])
def test_a_device_as_data_exits_2(capsys, tmp_path, data):
    assert _run(["train", "--data", data, "--out", str(tmp_path)]) == 2
    line = _last_stderr_line(capsys)
    assert data in line and "no such file" not in line


def test_warnings_are_one_line(capsys, monkeypatch, tmp_path):
    from dlsys.frontend import trainer

    def warn_and_stop(config, log):
        import warnings

        warnings.warn("not using the dlsys kernel cache folder /x: it can be written by "
                      "other users", RuntimeWarning, stacklevel=2)

    monkeypatch.setattr(trainer, "run_training", warn_and_stop)
    assert _run(["train", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "dlsys: warning: not using the dlsys kernel cache folder /x: it can be written by "
        "other users"]
