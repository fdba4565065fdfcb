"""``dlsys predict`` on ImageNet-style ONNX models (input N x 3 x H x W, sides of 64 or more):
photos resized, cropped and normalised as torchvision's ImageNet preset, the top 5 classes
printed. The reference here is written apart from dlsys (Pillow and numpy, and torchvision's
own transforms where it is installed) and run by onnxruntime."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")

from cli_runner import run_cli  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CLASSES = [f"class-{i}" for i in range(10)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _model(tmp_path, sides, named: bool = True):
    """A strided conv, ReLU, global average pool and a dense layer to 10 logits, on input
    (1, 3, *sides) (a str side: left free). Its weights are large enough that the logits
    lie well apart, so the top 5 of dlsys and of onnxruntime rank alike."""
    rng = np.random.default_rng(0)
    initializers = {"w": rng.normal(scale=0.5, size=(16, 3, 4, 4)),
                    "fc": rng.normal(scale=2.0, size=(10, 16)), "b": rng.normal(size=10)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "photos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *sides])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if named:
        helper.set_model_props(proto, {"class_names": json.dumps(CLASSES)})
    path = tmp_path / "photos.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def _photo(tmp_path, width: int, height: int):
    """A smooth colour picture (gradients and a disc) as a PNG."""
    y, x = np.mgrid[0:height, 0:width]
    disc = ((x - 0.6 * width) ** 2 + (y - 0.4 * height) ** 2) < (0.3 * height) ** 2
    pixels = np.stack([255 * x / width, 255 * y / height, 200 * disc + 30], axis=-1)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return path


def _preprocess(path, resize: int, crop: int, mean=MEAN, std=STD) -> np.ndarray:
    """The ImageNet preset written out: the shorter side to ``resize`` (bilinear), the
    central ``crop`` square, then (pixel / 255 - mean) / std; (1, 3, crop, crop)."""
    with Image.open(path) as image:
        width, height = image.size
        scale = resize / min(width, height)
        size = (resize, int(height * scale)) if width <= height else (int(width * scale), resize)
        resized = image.convert("RGB").resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - crop) / 2)), int(round((size[1] - crop) / 2))
    pixels = np.asarray(resized, np.float32)[top:top + crop, left:left + crop] / 255
    return ((pixels - mean) / np.asarray(std)).transpose(2, 0, 1)[None].astype(np.float32)


def _expected_top5(model_path, inputs: np.ndarray, names) -> list[tuple[str, float]]:
    logits = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(
        None, {"x": inputs})[0][0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    return [(names[i], 100 * probabilities[i]) for i in np.argsort(-probabilities)[:5]]


def _printed_top5(out: str) -> list[tuple[str, float]]:
    return [(name, float(p)) for name, p in re.findall(r"^\s+\d\. (\S+) \(([\d.]+)%\)$", out,
                                                        re.MULTILINE)]


def _assert_same_top5(printed, expected) -> None:
    assert [name for name, _ in printed] == [name for name, _ in expected]
    for (_, ours), (_, theirs) in zip(printed, expected):
        assert ours == pytest.approx(theirs, abs=0.051)  # printed to 0.1 %


def test_predict_preprocesses_photos_as_the_imagenet_preset(capsys, tmp_path):
    """A 64 x 64 model: the shorter side of a 100 x 80 photo goes to 73 (256 : 224 of 64),
    the central 64 x 64 is kept; the top 5 name the classes the file records."""
    model_path, photo = _model(tmp_path, (64, 64)), _photo(tmp_path, 100, 80)
    assert run_cli(["predict", str(model_path), str(photo)]) == 0
    out = capsys.readouterr().out
    assert f"{photo}:" in out
    expected = _expected_top5(model_path, _preprocess(photo, 73, 64), CLASSES)
    _assert_same_top5(_printed_top5(out), expected)


def test_predict_photo_options_on_a_model_of_free_sides(capsys, tmp_path):
    """Height and width left free: --crop sets the input size; --resize, --mean and --std
    replace the preset's; without names in the file, classes are indices."""
    model_path = _model(tmp_path, ("H", "W"), named=False)
    photo = _photo(tmp_path, 90, 120)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)
    assert run_cli(["predict", str(model_path), str(photo), "--resize", "80", "--crop", "72",
                    "--mean", "0.5,0.4,0.3", "--std", "0.25,0.3,0.2"]) == 0
    expected = _expected_top5(model_path, _preprocess(photo, 80, 72, mean, std),
                              [str(i) for i in range(10)])
    _assert_same_top5(_printed_top5(capsys.readouterr().out), expected)


def test_preset_matches_torchvision_transforms(tmp_path):
    """dlsys's preprocessing against torchvision's Resize, CenterCrop, ToTensor, Normalize."""
    from dlsys.frontend.images import PhotoPreset, read_photo
    from dlsys.testing.zoo import import_torchvision

    try:
        transforms = import_torchvision().transforms
    except ImportError:
        pytest.skip("torchvision is not installed")
    photo = _photo(tmp_path, 131, 97)
    preset = PhotoPreset.for_input((None, None), resize=100, crop=(88, 88))
    pipeline = transforms.Compose([transforms.Resize(100), transforms.CenterCrop(88),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    with Image.open(photo) as image:
        expected = pipeline(image.convert("RGB")).numpy()
    np.testing.assert_allclose(read_photo(photo, preset), expected, atol=1e-5)


@pytest.mark.parametrize("flags,words", [
    (["--crop", "32"], "the model takes 64x64 images"),
    (["--mean", "0.5,0.5"], "three numbers"),
    (["--std", "0.2,0,0.2"], "three positive numbers"),
    (["--crop", "big"], "HEIGHTxWIDTH"),
    (["--resize", "40"], "at least the crop"),
])
def test_predict_refuses_bad_photo_options(capsys, tmp_path, flags, words):
    model_path, photo = _model(tmp_path, (64, 64)), _photo(tmp_path, 80, 80)
    assert run_cli(["predict", str(model_path), str(photo), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_photo_options_refused_for_grey_models(capsys, tmp_path):
    """A model of MNIST's input takes no photo preset: the flags are refused by name."""
    node = helper.make_node("Flatten", ["x"], ["logits"])
    graph = helper.make_graph([node], "grey",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", 1, 2, 5])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             ["N", 10])])
    path = tmp_path / "grey.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                       ir_version=8).SerializeToString())
    np.save(tmp_path / "image.npy", np.full((1, 2, 5), 0.5, np.float32))
    assert run_cli(["predict", str(path), str(tmp_path / "image.npy"), "--resize", "256"]) == 2
    assert "--resize" in capsys.readouterr().err
