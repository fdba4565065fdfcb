"""Class names travel with an exported model: ``dlsys.onnx.export`` writes them to the file's
metadata_props, and the session and the imported module read them back."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import helper  # noqa: E402
from onnx_testing import model, normal  # noqa: E402

import dlsys  # noqa: E402
import dlsys.onnx as donnx  # noqa: E402
from dlsys import nn  # noqa: E402
from dlsys.errors import ArgumentTypeError, ShapeError  # noqa: E402
from dlsys.onnx.reader import CLASS_NAMES_KEY  # noqa: E402

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 10))


def test_export_writes_class_names_the_session_reads(tmp_path):
    path = tmp_path / "m.onnx"
    donnx.export(_mlp(), (1, 12), path, class_names=NAMES)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props[CLASS_NAMES_KEY]) == NAMES
    session = donnx.InferenceSession(str(path))
    assert session.class_names == NAMES
    assert session.fixed_batch is None  # export leaves the batch free
    assert donnx.import_model(path).class_names == NAMES
    assert donnx.import_model(path).metadata == {"classes": NAMES}
    # onnxruntime users find them where they look.
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map[CLASS_NAMES_KEY]) == NAMES
    assert session.get_modelmeta().custom_metadata_map == meta.custom_metadata_map
    assert session.get_modelmeta().producer_name == "dlsys"


def test_names_recorded_by_a_saved_model_are_exported(tmp_path):
    """``dlsys train`` records the names in model.npz's metadata; export finds them there."""
    dlsys.save(_mlp(), tmp_path / "m.npz", metadata={"input_shape": [12], "classes": NAMES})
    donnx.export(dlsys.load(tmp_path / "m.npz"), (1, 12), tmp_path / "m.onnx")
    assert donnx.InferenceSession(str(tmp_path / "m.onnx")).class_names == NAMES


def test_reexported_imported_model_keeps_or_replaces_its_names(tmp_path):
    donnx.export(_mlp(), (1, 12), tmp_path / "a.onnx", class_names=NAMES)
    imported = donnx.import_model(tmp_path / "a.onnx")
    donnx.export(imported, (2, 12), tmp_path / "b.onnx")
    assert donnx.InferenceSession(str(tmp_path / "b.onnx")).class_names == NAMES
    other = [n.upper() for n in NAMES]
    donnx.export(imported, (2, 12), tmp_path / "c.onnx", class_names=other)
    proto = onnx.load(str(tmp_path / "c.onnx"))
    assert [p.key for p in proto.metadata_props] == [CLASS_NAMES_KEY]
    assert donnx.InferenceSession(str(tmp_path / "c.onnx")).class_names == other


def test_no_names_without_any(tmp_path):
    donnx.export(_mlp(), (1, 12), tmp_path / "m.onnx")
    assert not onnx.load(str(tmp_path / "m.onnx")).metadata_props
    session = donnx.InferenceSession(str(tmp_path / "m.onnx"))
    assert session.class_names is None and session.get_modelmeta().custom_metadata_map == {}
    assert donnx.import_model(tmp_path / "m.onnx").metadata == {}


def test_export_refuses_names_that_do_not_fit(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ShapeError, match="3 class names for an output of shape"):
        donnx.export(_mlp(), (1, 12), path, class_names=NAMES[:3])
    for bad in ("Bag", [1, 2], [], {"a": 1}):
        with pytest.raises(ArgumentTypeError, match="class_names must be a list of strings"):
            donnx.export(_mlp(), (1, 12), path, class_names=bad)
    assert not path.exists()


@pytest.mark.parametrize("value,match", [
    ("Bag,Coat", "is not a JSON list"), ('{"0": "Bag"}', "is not a JSON list"),
    ("[1, 2, 3]", "is not a JSON list"), ('["a", "b"]', "names 2 classes, the model's output "
                                                        "has 3 columns")])
def test_malformed_names_in_a_file_are_ignored_with_a_warning(value, match):
    # Metadata is free-form: another tool's use of the key must not stop a model that runs.
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    proto = model([node], {"x": ("batch", 4)}, {"y": ("batch", 3)}, {"w": normal((3, 4))})
    proto.metadata_props.add(key=CLASS_NAMES_KEY, value=value)
    with pytest.warns(RuntimeWarning, match=match) as caught:
        session = donnx.InferenceSession(proto.SerializeToString())
    assert session.class_names is None
    assert "\n" not in str(caught[0].message) and CLASS_NAMES_KEY in str(caught[0].message)


def test_session_runs_as_before_with_names():
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    proto = model([node], {"x": ("batch", 4)}, {"y": ("batch", 3)}, {"w": normal((3, 4))})
    proto.metadata_props.add(key=CLASS_NAMES_KEY, value='["a", "b", "c"]')
    session = donnx.InferenceSession(proto.SerializeToString())
    assert session.class_names == ["a", "b", "c"]
    x = normal((2, 4))
    np.testing.assert_allclose(session.run(None, {"x": x})[0],
                               x @ onnx.numpy_helper.to_array(proto.graph.initializer[0]).T,
                               rtol=1e-5)
