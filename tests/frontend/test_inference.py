"""``dlsys eval`` and ``dlsys predict`` on files other than a ``dlsys train`` run's (issue
24): models saved from Python, ONNX files with class names or a fixed batch size."""

import numpy as np
import pytest
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


def _onnx_logreg(path, batch: int | str = "batch", names: list[str] | None = None):
    """A 784-10 linear classifier as an ONNX file taking 1 x 28 x 28 images; a fixed
    ``batch`` is baked into its Reshape as PyTorch's default exporter bakes the example's.
    Returns the file and a function computing its logits with numpy."""
    import json

    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.05, (10, 784)).astype(np.float32)
    bias = rng.normal(0, 0.1, 10).astype(np.float32)
    rows = batch if isinstance(batch, int) else -1
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["pixels", "shape"], ["rows"]),
         helper.make_node("Gemm", ["rows", "w", "b"], ["logits"], transB=1)], "logreg",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(np.array([rows, 784], np.int64), "shape")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if names is not None:
        helper.set_model_props(proto, {"class_names": json.dumps(names)})
    path.write_bytes(proto.SerializeToString())
    return path, lambda images: images.reshape(len(images), 784) @ weight.T + bias


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]


def _test_images(data_dir, tmp_path, count: int = 3):
    from dlsys.data.mnist import load_dataset

    images = load_dataset(str(data_dir)).test.images[:count]
    for i, image in enumerate(images):
        np.save(tmp_path / f"image{i}.npy", image.reshape(28, 28))
    return images, [str(tmp_path / f"image{i}.npy") for i in range(count)]


def _predicted(capsys) -> list[str]:
    lines = capsys.readouterr().out.strip().splitlines()
    return [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in lines if ".npy: " in line]


def test_onnx_class_names_are_printed_and_classes_names_them(capsys, data_dir, tmp_path):
    pytest.importorskip("onnx")
    path, logits = _onnx_logreg(tmp_path / "named.onnx", names=FASHION)
    images, files = _test_images(data_dir, tmp_path)
    expected = logits(images).argmax(axis=1)
    assert _run(["predict", str(path), *files]) == 0
    assert _predicted(capsys) == [FASHION[c] for c in expected]

    plain, _ = _onnx_logreg(tmp_path / "plain.onnx")
    letters = [chr(ord("a") + c) for c in range(10)]
    assert _run(["predict", str(plain), *files, "--classes", ",".join(letters)]) == 0
    assert _predicted(capsys) == [letters[c] for c in expected]
    (tmp_path / "classes.txt").write_text("\n".join(FASHION) + "\n")
    assert _run(["eval", str(plain), "--data", str(data_dir), "--classes",
                 str(tmp_path / "classes.txt")]) == 0
    assert "  Ankle boot  " in capsys.readouterr().out
    assert _run(["predict", str(plain), *files, "--classes", "cat,dog"]) == 2
    assert _err(capsys) == "dlsys: error: --classes names 2 classes; the model has 10 outputs"


def test_onnx_files_that_fix_the_batch_run_at_that_batch(capsys, data_dir, tmp_path):
    pytest.importorskip("onnx")
    from dlsys.data.mnist import load_dataset

    path, logits = _onnx_logreg(tmp_path / "fixed.onnx", batch=7)
    test = load_dataset(str(data_dir)).test  # 60 images: eight batches of 7, then 4 padded
    expected = logits(test.images)
    assert _run(["eval", str(path), "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{path} fixes the batch size at 7: images run in batches of 7, the last padded" \
        in out
    shifted = expected - expected.max(axis=1, keepdims=True)
    loss = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(60), test.labels])
    accuracy = np.mean(expected.argmax(axis=1) == test.labels)
    assert f"loss {loss:.4f}  accuracy {100 * accuracy:.2f}%" in out

    images, files = _test_images(data_dir, tmp_path)
    assert _run(["predict", str(path), *files]) == 0
    assert _predicted(capsys) == [str(c) for c in logits(images).argmax(axis=1)]
