"""Model files: save -> load gives the same predictions; bad files are named errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import dlsys
from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ArgumentTypeError, DataError


def _predict(model, images):
    x = ad.Variable("x")
    return ad.Executor([model(x)]).run({x: images}, convert_to_numpy_ret_vals=True)[0]


@pytest.fixture
def saved(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 4, bias=False),
                          nn.Sigmoid())
    path = tmp_path / "model.npz"
    dlsys.save(model, path)
    return model, path


def test_save_then_load_predicts_identically(saved):
    model, path = saved
    loaded = dlsys.load(path)
    assert repr(loaded) == repr(model)
    images = np.random.default_rng(0).normal(size=(6, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(_predict(loaded, images), _predict(model, images))


def test_loading_never_unpickles(saved, tmp_path):
    _, path = saved
    with np.load(path, allow_pickle=False) as archive:  # would raise on an object array
        assert "__dlsys_model__" in archive.files


def _rewrite(path, tmp_path, change):
    with np.load(path, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    change(entries)
    out = tmp_path / "tampered.npz"
    np.savez(out, **entries)
    return out


def _header(entries):
    return json.loads(bytes(entries["__dlsys_model__"]).decode())


def _set_header(entries, header):
    entries["__dlsys_model__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _unknown_layer(entries):
    header = _header(entries)
    header["architecture"]["children"][0]["type"] = "os.system"
    _set_header(entries, header)


def _bad_config(entries):
    header = _header(entries)
    header["architecture"]["children"][1]["config"]["in_features"] = -3
    _set_header(entries, header)


def _extra_argument(entries):
    header = _header(entries)
    header["architecture"]["children"][1]["config"]["evil"] = 1
    _set_header(entries, header)


def _wrong_weight(entries):
    entries["1.weight"] = np.zeros((8, 21), dtype=np.float32)


def _missing_header(entries):
    del entries["__dlsys_model__"]


@pytest.mark.parametrize("change, text", [
    (_unknown_layer, "unknown layer type"), (_bad_config, "in_features"),
    (_extra_argument, "evil"), (_wrong_weight, "1.weight"), (_missing_header, "not a dlsys"),
])
def test_tampered_files_are_named_errors(saved, tmp_path, change, text):
    _, path = saved
    with pytest.raises(DataError, match=text):
        dlsys.load(_rewrite(path, tmp_path, change))


def test_truncated_and_foreign_files(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 5):
        cut = tmp_path / f"cut{size}.npz"
        cut.write_bytes(data[:size])
        with pytest.raises(DataError, match=str(cut)):
            dlsys.load(cut)
    other = tmp_path / "other.npz"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("x.npy", b"not numpy")
    with pytest.raises(DataError):
        dlsys.load(other)
    with pytest.raises(DataError, match="no such model file"):
        dlsys.load(tmp_path / "missing.npz")


def test_only_dlsys_layers_can_be_saved(tmp_path):
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(ArgumentTypeError, match="Custom"):
        dlsys.save(Custom(), tmp_path / "custom.npz")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_per_axis_sizes_round_trip(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, (3, 2), stride=(2, 1), padding=(1, 0)),
                          nn.MaxPool2d((2, 1)))
    dlsys.save(model, tmp_path / "conv.npz")
    loaded = dlsys.load(tmp_path / "conv.npz")
    assert repr(loaded) == repr(model)
    images = np.random.default_rng(0).normal(size=(2, 1, 7, 5)).astype(np.float32)
    np.testing.assert_array_equal(_predict(loaded, images), _predict(model, images))
