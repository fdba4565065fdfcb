"""The command line on inputs that ask for too much or do not fit: one line on stderr, exit
status 2, and nothing allocated that the input only claims (issue 22)."""

import json
import struct
import zlib

import numpy as np
import pytest
from cli_runner import run_cli as _run

import dlsys
from dlsys import nn
from dlsys.frontend import inference, settings
from dlsys.testing.synthetic import write_idx_dataset


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _model(path, outputs: int = 10, input_shape=(784,)):
    dlsys.save(nn.Sequential(nn.Flatten(), nn.Linear(784, outputs)), path,
               metadata={"input_shape": list(input_shape)})
    return path


def _png_header(path, width: int, height: int):
    """A grey PNG that declares ``width`` x ``height`` and holds one row: the size is read
    from the header, so this is all a decompression bomb needs to be."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
                     + chunk(b"IEND", b""))
    return path


def test_eval_of_a_model_with_other_outputs_than_the_classes(capsys, data_dir, tmp_path):
    model = _model(tmp_path / "five.npz", outputs=5)
    assert _run(["eval", str(model), "--data", str(data_dir)]) == 2
    assert _one_line(capsys) == (f"dlsys: error: {model}: the model has 5 outputs, the data "
                                 f"set 10 classes")


def test_predict_refuses_an_input_shape_too_large_to_allocate(capsys, tmp_path):
    model = _model(tmp_path / "huge.npz", input_shape=(1, 46000, 46000))
    image = _png_header(tmp_path / "digit.png", 28, 28)
    assert _run(["predict", str(model), str(image)]) == 2
    assert f"{model}: input shape [1, 46000, 46000] has 2116000000 elements per image, " \
           f"more than the {inference.MAX_INPUT_ELEMENTS}" in _one_line(capsys)


@pytest.mark.parametrize("side, words", [
    (5000, "an image of 5000x5000 pixels, more than the 16777216 dlsys predict decodes"),
    (10000, "too large an image to decode"),  # PIL warns
    (20000, "too large an image to decode"),  # PIL raises DecompressionBombError
])
def test_predict_refuses_an_image_too_large_to_decode(capsys, tmp_path, side, words):
    model = _model(tmp_path / "model.npz")
    image = _png_header(tmp_path / "bomb.png", side, side)
    assert image.stat().st_size < 64 << 10
    assert _run(["predict", str(model), str(image)]) == 2
    assert f"{image}: {words}" in _one_line(capsys)


def test_train_refuses_hidden_widths_too_large_to_hold(capsys, data_dir, tmp_path):
    assert _run(["train", "--hidden", "100000000", "--data", str(data_dir), "--batch-size", "50",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]  # argparse's usage, then its one line
    assert line.startswith("dlsys train: error: argument --hidden") and "Traceback" not in err
    assert "--hidden: model mlp with hidden sizes [100000000] has 79500000010 parameters " \
           "(296.2 GiB of float32), more than the 256 MiB" in line
    assert not (tmp_path / "run").exists()


def test_a_recorded_run_too_large_to_hold_is_refused_naming_its_file(capsys, data_dir,
                                                                    tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    recorded = {"model": "mlp", "hidden": [100000000], "data": str(data_dir), "epochs": 1,
                "batch_size": 50, "optimizer": "sgd", "lr": 0.2, "weight_decay": 0.0,
                "lr_schedule": "constant", "warmup": 0, "seed": 0, "val_size": 100}
    (out / "run.json").write_text(json.dumps(recorded))
    assert _run(["train", "--resume", "--out", str(out), "--no-progress"]) == 2
    assert f"{out / 'run.json'}: unusable run settings: model mlp with hidden sizes " \
           f"[100000000] has 79500000010 parameters" in _one_line(capsys)


def test_the_parameter_bound_is_what_the_model_holds():
    # 784 -> 256 -> 100 -> 10: the default MLP's parameters, from the widths alone.
    assert settings.model_size_problem("mlp") is None
    widest = (settings.MAX_PARAM_BYTES // 4 - 10) // (784 + 1 + 10)
    assert settings.model_size_problem("mlp", [widest]) is None
    assert "more than the 256 MiB" in settings.model_size_problem("mlp", [widest + 1])


def test_resume_on_another_data_set_is_refused_naming_both(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    train = ["train", "--model", "logreg", "--val-size", "100", "--batch-size", "50",
             "--out", str(out), "--no-progress"]
    assert _run([*train, "--data", str(data_dir), "--epochs", "1"]) == 0
    other = write_idx_dataset(tmp_path / "other", num_train=300, num_test=60, seed=1)
    capsys.readouterr()
    assert _run(["train", "--resume", "--out", str(out), "--data", str(other),
                 "--epochs", "2"]) == 2
    assert _one_line(capsys) == (
        f"dlsys: error: --data {other} is not the data set of the run being resumed, "
        f"{data_dir}; continue that run with: dlsys train --out {out} --resume (or train "
        f"on {other} in another --out)")
    # The recorded data set, however spelt, is no change.
    assert _run(["train", "--resume", "--out", str(out), "--data", f"{data_dir}/",
                 "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["data"] == str(data_dir)


def test_eval_refuses_a_model_whose_output_is_not_class_scores(capsys, data_dir, tmp_path):
    model = tmp_path / "conv.npz"
    dlsys.save(nn.Sequential(nn.Conv2d(1, 2, 3)), model, metadata={"input_shape": [1, 28, 28]})
    assert _run(["eval", str(model), "--data", str(data_dir)]) == 2
    assert "the model's output has shape (1, 2, 26, 26) for one image" in _one_line(capsys)
    np.save(tmp_path / "image.npy", np.zeros((1, 28, 28), np.float32))
    assert _run(["predict", str(model), str(tmp_path / "image.npy")]) == 2
    assert "the model's output has shape (1, 2, 26, 26)" in _one_line(capsys)
