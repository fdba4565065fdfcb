"""ONNX external data (PyTorch's default exporter writes its weights so): read from beside the
model file, and every file that points elsewhere or disagrees with itself refused with one
line naming the tensor and the file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import helper  # noqa: E402
from onnx_testing import TOLERANCE, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys.errors import DataError  # noqa: E402
from dlsys.onnx import external  # noqa: E402

WEIGHT_BYTES = 3 * 4 * 4  # the float32 weight (3, 4) of _mlp


def _mlp() -> onnx.ModelProto:
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    return model([node], {"x": ("batch", 4)}, {"y": ("batch", 3)},
                 {"w": normal((3, 4)), "b": normal((3,))})


def _save_external(proto: onnx.ModelProto, path: Path, location: str) -> Path:
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def _pointing(folder: Path, **fields: str) -> Path:
    """``folder/m.onnx`` whose weight ``w`` names external data by ``fields`` (location,
    offset, length), as an attacker would write them; its bytes are not saved anywhere."""
    proto = _mlp()
    weight = next(t for t in proto.graph.initializer if t.name == "w")
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in fields.items():
        weight.external_data.add(key=key, value=value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def _weight_bytes() -> bytes:
    return next(onnx.numpy_helper.to_array(t) for t in _mlp().graph.initializer
                if t.name == "w").tobytes()


def _refused(path: Path, match: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        donnx.InferenceSession(str(path))
    message = str(err.value)
    assert "\n" not in message and "'w'" in message and str(path) in message, message
    return message


def test_weights_beside_the_model_are_read(tmp_path):
    path = _save_external(_mlp(), tmp_path / "mlp.onnx", "mlp.onnx.data")
    assert (tmp_path / "mlp.onnx.data").is_file()
    assert all(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    x = normal((5, 4), 1)
    inline = donnx.InferenceSession(_mlp().SerializeToString()).run(None, {"x": x})[0]
    # Also from a subfolder of the model's folder, and from a path relative to the cwd.
    (tmp_path / "weights").mkdir()
    _save_external(_mlp(), tmp_path / "sub.onnx", "weights/all.bin")
    for name in ("mlp.onnx", "sub.onnx"):
        ours = donnx.InferenceSession(str(tmp_path / name)).run(None, {"x": x})[0]
        theirs = ort.InferenceSession(str(tmp_path / name),
                                      providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(ours, inline)
        np.testing.assert_allclose(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        donnx.import_model("mlp.onnx")
    finally:
        os.chdir(cwd)


def test_constant_node_tensor_in_external_data(tmp_path):
    const = helper.make_node("Constant", [], ["w"],
                             value=onnx.numpy_helper.from_array(normal((4, 3)), "w"))
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    proto = model([const, node], {"x": ("batch", 4)}, {"y": ("batch", 3)})
    onnx.external_data_helper.convert_model_to_external_data(
        proto, location="c.data", size_threshold=0, convert_attribute=True)
    onnx.save_model(proto, str(tmp_path / "c.onnx"))
    assert external.external_tensors(onnx.load(str(tmp_path / "c.onnx"),
                                               load_external_data=False))
    x = normal((2, 4))
    np.testing.assert_allclose(donnx.InferenceSession(str(tmp_path / "c.onnx")).run(
        None, {"x": x})[0], x @ onnx.numpy_helper.to_array(const.attribute[0].t), rtol=1e-5)


def test_model_given_as_bytes_or_proto_has_no_folder_to_read_from(tmp_path):
    path = _save_external(_mlp(), tmp_path / "mlp.onnx", "mlp.onnx.data")
    for source in (path.read_bytes(), onnx.load(str(path), load_external_data=False)):
        with pytest.raises(DataError, match="give the model's path") as err:
            donnx.import_model(source)
        assert "'w'" in str(err.value) and "mlp.onnx.data" in str(err.value)


def test_parent_folder_is_refused(tmp_path):
    (tmp_path / "x").write_bytes(_weight_bytes())
    _refused(_pointing(tmp_path / "model", location="../x"), r"climbs out.*'\.\.'")
    _refused(_pointing(tmp_path / "model", location="sub/../../x"), "climbs out")


def test_absolute_path_is_refused(tmp_path):
    (tmp_path / "x").write_bytes(_weight_bytes())
    _refused(_pointing(tmp_path / "model", location=str(tmp_path / "x")), "absolute path")
    for windows in ("C:/weights.bin", "C:weights.bin"):
        _refused(_pointing(tmp_path / "model", location=windows), "absolute path")
    for windows in ("\\\\server\\share\\w.bin", "..\\x"):
        _refused(_pointing(tmp_path / "model", location=windows), "holds a backslash")


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges there")
def test_symlink_leaving_the_folder_is_refused(tmp_path):
    (tmp_path / "outside.bin").write_bytes(_weight_bytes())
    folder = tmp_path / "model"
    path = _pointing(folder, location="w.bin")
    (folder / "w.bin").symlink_to(tmp_path / "outside.bin")
    _refused(path, "outside the model's folder")
    (folder / "w.bin").unlink()
    (folder / "sub").symlink_to(tmp_path, target_is_directory=True)
    _refused(_pointing(folder, location="sub/outside.bin"), "outside the model's folder")
    # A link that stays inside the folder is the folder's own file.
    (folder / "real.bin").write_bytes(_weight_bytes())
    (folder / "w.bin").symlink_to(folder / "real.bin")
    donnx.import_model(_pointing(folder, location="w.bin"))


def test_offsets_and_lengths_are_checked_against_the_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(_weight_bytes())
    _refused(_pointing(folder, location="w.bin", offset="1000"), "past the file's end")
    _refused(_pointing(folder, location="w.bin", offset="8", length=str(WEIGHT_BYTES)),
             "past the file's end")
    _refused(_pointing(folder, location="w.bin", length="40"),
             r"gives it 40 bytes, its shape \(3, 4\) and dtype take 48")
    _refused(_pointing(folder, location="w.bin", offset="4"), "gives it 44 bytes")
    for bad in ("-4", "0x10", " 4", "4.0", "", "\u00b2", "9" * 5000):
        _refused(_pointing(folder, location="w.bin", offset=bad), "not a whole number")
    (folder / "big.bin").write_bytes(b"\0" * 8 + _weight_bytes() + b"\0" * 8)
    donnx.import_model(_pointing(folder, location="big.bin", offset="8",
                                 length=str(WEIGHT_BYTES)))


def test_missing_odd_and_unnamed_files_are_refused(tmp_path):
    folder = tmp_path / "model"
    _refused(_pointing(folder, location="absent.bin"), "is not in")
    _refused(_pointing(folder, location=""), "without a file name")
    _refused(_pointing(folder, location="w\x00.bin"), "NUL character")
    _refused(_pointing(folder, offset="0"), "without a file name")
    (folder / "dir").mkdir()
    _refused(_pointing(folder, location="dir"), "not a regular file")
    if hasattr(os, "mkfifo"):  # reading a FIFO would wait for a writer forever
        os.mkfifo(folder / "fifo")
        _refused(_pointing(folder, location="fifo", length=str(WEIGHT_BYTES)),
                 "not a regular file")
    (folder / "w.bin").write_bytes(_weight_bytes())
    _refused(_pointing(folder, location="w.bin", sha256="x"), "unknown external data field")


def test_total_size_is_bounded(tmp_path, monkeypatch):
    path = _save_external(_mlp(), tmp_path / "mlp.onnx", "mlp.onnx.data")
    monkeypatch.setattr(external, "MAX_EXTERNAL_BYTES", WEIGHT_BYTES)
    with pytest.raises(DataError, match="external tensors take 60 bytes, more than the 48"):
        donnx.import_model(path)
