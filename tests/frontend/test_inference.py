"""``dlsys eval`` and ``dlsys predict`` on files other than a ``dlsys train`` run's: models
saved from Python (issue 24)."""

import numpy as np
from cli_runner import run_cli as _run

import dlsys
from dlsys import nn
from dlsys.nn import serialization


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _readme_model() -> nn.Module:
    """The README's Python example's model."""
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))


def test_a_model_saved_from_python_is_evaluated_and_predicts(capsys, data_dir, tmp_path):
    path = tmp_path / "mlp.npz"
    dlsys.save(_readme_model(), path)
    assert _run(["eval", str(path), "--data", str(data_dir)]) == 0
    assert "accuracy" in capsys.readouterr().out
    np.save(tmp_path / "image.npy", np.zeros((28, 28), np.float32))
    assert _run(["predict", str(path), str(tmp_path / "image.npy")]) == 0
    assert "image.npy: " in capsys.readouterr().out


def test_a_file_saved_without_a_shape_gets_the_one_its_first_layer_fixes(
        capsys, data_dir, tmp_path, monkeypatch):
    path = tmp_path / "old.npz"
    with monkeypatch.context() as patch:  # as dlsys.save wrote files before it recorded shapes
        patch.setattr(serialization, "infer_input_shape", lambda model: None)
        dlsys.save(nn.Sequential(nn.Conv2d(1, 2, 5), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(2 * 12 * 12, 10)), path)
    assert "input_shape" not in dlsys.load(path).metadata
    assert _run(["eval", str(path), "--data", str(data_dir)]) == 0


def test_a_model_whose_shape_nothing_fixes_says_how_to_record_it(capsys, data_dir, tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AvgPool2d(26), nn.Flatten())
    path = tmp_path / "pooled.npz"
    dlsys.save(model, path)
    assert _run(["eval", str(path), "--data", str(data_dir)]) == 2
    assert _err(capsys) == (f"dlsys: error: {path}: the model file does not record its input "
                            f"shape, and its first layer does not fix one; save it with "
                            f"dlsys.save(model, path, input_shape=(1, 28, 28)) (one image, "
                            f"without the batch)")
    dlsys.save(model, path, input_shape=(1, 28, 28))
    assert _run(["eval", str(path), "--data", str(data_dir)]) == 0
