"""``dlsys eval`` and ``dlsys predict`` on ONNX files: the input shape read from the graph."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_testing import model, normal  # noqa: E402

from dlsys.data.mnist import load_dataset  # noqa: E402
from dlsys.frontend.cli import main  # noqa: E402
from dlsys.testing.synthetic import write_idx_dataset  # noqa: E402


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), num_train=300, num_test=60)


def _logreg(tmp_path, data_dir):
    """A 784-10 linear classifier whose rows are the training images' class means, so that
    it does better than chance; and its logits on the test split, computed by numpy."""
    data = load_dataset(str(data_dir))
    weights = np.stack([data.train.images[data.train.labels == c].mean(axis=0)
                        for c in range(10)]).astype(np.float32)
    bias = -0.5 * (weights ** 2).sum(axis=1)
    node = helper.make_node("Gemm", ["pixels", "w", "b"], ["logits"], transB=1)
    proto = model([node], {"pixels": ("batch", 784)}, {"logits": ("batch", 10)},
                  {"w": weights, "b": bias.astype(np.float32)})
    path = tmp_path / "logreg.onnx"
    path.write_bytes(proto.SerializeToString())
    return path, data.test.images @ weights.T + bias, data.test.labels


def test_eval_and_predict_an_onnx_model(capsys, data_dir, tmp_path):
    path, logits, labels = _logreg(tmp_path, data_dir)
    assert _run(["eval", str(path), "--data", str(data_dir), "--batch-size", "25"]) == 0
    accuracy = np.mean(logits.argmax(axis=1) == labels)
    assert accuracy > 0.3
    assert f"accuracy {100 * accuracy:.2f}%" in capsys.readouterr().out

    images = load_dataset(str(data_dir)).test.images[:3]
    for i, image in enumerate(images):
        np.save(tmp_path / f"digit{i}.npy", image.reshape(28, 28))
    assert _run(["predict", str(path), *(str(tmp_path / f"digit{i}.npy") for i in range(3))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == \
        [str(c) for c in logits[:3].argmax(axis=1)]


def test_predict_with_an_image_shaped_onnx_input(capsys, tmp_path):
    """A convolutional model's input (batch, 1, 28, 28): the pixels take its shape."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"])]
    proto = model(nodes, {"x": ("N", 1, 28, 28)}, {"y": ("N", 3)},
                  {"w": normal((2, 1, 4, 4)), "fc": normal((2 * 7 * 7, 3), 1)})
    path = tmp_path / "cnn.onnx"
    path.write_bytes(proto.SerializeToString())
    np.save(tmp_path / "image.npy", np.full((28, 28), 0.5, np.float32))
    assert _run(["predict", str(path), str(tmp_path / "image.npy")]) == 0
    assert "image.npy: " in capsys.readouterr().out


def test_onnx_models_the_commands_cannot_take(capsys, tmp_path):
    relu = helper.make_node("Relu", ["x"], ["y"])
    path = tmp_path / "free.onnx"
    path.write_bytes(model([relu], {"x": ("N", "W")}, {"y": ("N", "W")}).SerializeToString())
    np.save(tmp_path / "image.npy", np.zeros(784, np.float32))
    assert _run(["predict", str(path), str(tmp_path / "image.npy")]) == 2
    assert "every dimension after the batch fixed" in capsys.readouterr().err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07junk")
    assert _run(["predict", str(broken), str(tmp_path / "image.npy")]) == 2
    err = capsys.readouterr().err
    assert "broken.onnx" in err and "Traceback" not in err
