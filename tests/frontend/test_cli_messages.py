"""What the command line says to a newcomer's mistakes (issue 24): the command's own usage
line and one error line, the flag meant for a misspelt one, no prefix matching, and files
that are not what a flag takes named for what they are."""

import pickle
import zipfile

import numpy as np
import pytest
from cli_runner import run_cli as _run

import dlsys
from dlsys import nn
from dlsys.frontend.cli import build_parser


def _stderr(capsys) -> list[str]:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err


@pytest.mark.parametrize("flags, complaint", [
    (["--epochs", "x"], "argument --epochs: must be a positive integer, got 'x'"),
    (["--epoch", "3"], "unrecognized arguments: --epoch 3; did you mean --epochs?"),
    (["--batchsize=5"], "unrecognized arguments: --batchsize=5; did you mean --batch-size?"),
    (["--model", "logreg", "--hidden", "64"],
     "--hidden applies to --model mlp only; logreg has no hidden widths to set"),
])
def test_a_bad_train_flag_prints_the_train_usage_line_and_the_error(capsys, flags, complaint):
    assert _run(["train", *flags]) == 2
    assert _stderr(capsys) == [
        "usage: dlsys train [options]  (dlsys train --help lists the options)",
        f"dlsys train: error: {complaint}"]


def test_no_parser_matches_a_flag_by_its_prefix():
    parser = build_parser()
    assert not parser.allow_abbrev
    assert all(not command.allow_abbrev for command in parser.commands.values())
    assert set(parser.commands) == {"train", "eval", "predict", "inspect", "generate",
                                    "compile"}


def test_an_unknown_flag_of_eval_is_reported_by_eval(capsys, tmp_path):
    assert _run(["eval", str(tmp_path / "model.npz"), "--batch", "5"]) == 2
    assert _stderr(capsys) == [
        "usage: dlsys eval [options] MODEL  (dlsys eval --help lists the options)",
        "dlsys eval: error: unrecognized arguments: --batch 5; did you mean --batch-size?"]


def test_train_help_names_every_optimizer_and_the_default_run_folders(capsys):
    assert _run(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "mini-batch SGD, SGD with momentum, Adam or AdamW" in text
    assert "runs/<model>, then runs/<model>-2" in text and "latest run" in text


def test_out_naming_a_file_is_a_file_not_a_folder(capsys, tmp_path):
    (tmp_path / "README.md").write_text("# notes")
    assert _run(["train", "--out", str(tmp_path / "README.md")]) == 2
    assert _stderr(capsys) == [
        f"dlsys: error: output directory {tmp_path / 'README.md'} is a file, not a folder"]


def _object_npy(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _plain_npz(path):
    np.savez(path, weights=np.zeros(3))


def _zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


@pytest.mark.parametrize("name, write", [
    ("README.md", lambda path: path.write_text("# dlsys\n")),
    ("model.pkl", lambda path: path.write_bytes(pickle.dumps({"w": [1, 2]}))),
    ("objects.npy", _object_npy),
    ("params.npz", _plain_npz),
    ("archive.zip", _zip),
])
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_file_that_is_no_model_says_what_a_model_file_is(capsys, tmp_path, name, write,
                                                          command):
    write(tmp_path / name)
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((28, 28), np.float32))
    args = [command, str(tmp_path / name)] + ([str(image)] if command == "predict" else [])
    assert _run(args) == 2
    (line,) = _stderr(capsys)
    assert line.startswith(f"dlsys: error: {tmp_path / name}: not a dlsys model file (a model "
                           "file is a .npz written by dlsys train or dlsys.save, or an .onnx "
                           "file)")
    assert "allow_pickle" not in line and "pickle" not in line.lower()


def test_a_run_folder_is_read_through_its_model_file(capsys, data_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert _run(["eval", str(run), "--data", str(data_dir)]) == 2
    assert _stderr(capsys) == [f"dlsys: error: {run} is a folder, not a model file, and holds "
                               f"no model.npz (a run folder has one once its run finished)"]
    dlsys.save(nn.Sequential(nn.Linear(784, 10)), run / "model.npz",
               metadata={"input_shape": [784]})
    assert _run(["eval", str(run), "--data", str(data_dir)]) == 0
    assert f"{run / 'model.npz'} on" in capsys.readouterr().out
