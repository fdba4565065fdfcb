"""Model files: save -> load gives the same predictions; bad files are named errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from bombs import refusal_and_growth, write_npy_member

import dlsys
from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ArgumentTypeError, DataError
from dlsys.nn import serialization


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


def _with_member(path, out, name, shape, zeros):
    """``path``'s model file with member ``name`` replaced (or added)."""
    with zipfile.ZipFile(path) as source, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            if info.filename != name + ".npy":
                archive.writestr(info.filename, source.read(info))
        write_npy_member(archive, name, shape, zeros)
    return out


_BIG = 128 << 20


def _load_measured(path):
    """What ``dlsys.load(path)`` said and what it cost in memory (dlsys imported before)."""
    return refusal_and_growth("import dlsys.nn.serialization", f"dlsys.load({str(path)!r})")


@pytest.mark.parametrize("shape, words", [
    # The header lies about the member's size: 640 bytes declared, 128 MiB inflated.
    ((8, 20), "member 1.weight: its header declares float32 of shape (8, 20) (640 bytes), "
              f"the archive holds {_BIG}"),
    # An honest member, 128 MiB of it, where the architecture has an 8 x 20 weight.
    ((8192, 4096), "1.weight has shape (8192, 4096), the architecture (8, 20)"),
])
def test_an_oversized_member_is_refused_before_it_is_inflated(saved, tmp_path, shape, words):
    _, path = saved
    bomb = _with_member(path, tmp_path / "bomb.npz", "1.weight", shape,
                        _BIG if shape == (8, 20) else 4 * 8192 * 4096)
    assert bomb.stat().st_size < 1 << 20
    output, grown_kib = _load_measured(bomb)
    assert grown_kib < 32 * 1024, f"loading took {grown_kib} KiB more memory"
    assert f"refused: {bomb}" in output and words in output


def test_an_architecture_is_checked_against_the_weights_before_it_is_built(tmp_path):
    # 500 bytes declaring Linear(8000, 8000): 256 MB of float32 (512 MB drawn as float64)
    # that the file does not hold.
    path = tmp_path / "model.npz"
    header = {"format": "dlsys-model", "version": 1, "metadata": {},
              "architecture": {"type": "Sequential", "children": [
                  {"type": "Linear", "config": {"in_features": 8000, "out_features": 8000}}]}}
    np.savez(path, __dlsys_model__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    output, grown_kib = _load_measured(path)
    assert grown_kib < 32 * 1024, f"loading took {grown_kib} KiB more memory"
    assert "the weights do not fit the architecture: missing 0.weight, 0.bias" in output


def test_unknown_members_are_refused_by_name(saved, tmp_path):
    _, path = saved
    extra = _with_member(path, tmp_path / "extra.npz", "junk", (3,), 12)
    with pytest.raises(DataError, match="unexpected members junk"):
        dlsys.load(extra)


def test_a_model_file_over_the_total_bound(saved, tmp_path, monkeypatch):
    _, path = saved
    monkeypatch.setattr(serialization, "MAX_MODEL_BYTES", 500)
    with pytest.raises(DataError, match=f"{path}: its 4 arrays take .* bytes inflated, more "
                                        "than the 500 a file may hold"):
        dlsys.load(path)


def test_every_layer_type_states_its_parameters_without_being_built():
    # A layer type the tables do not know is built to find its parameters, allocating
    # whatever a file's config asks: add it to LAYER_STATE or STATELESS_LAYERS.
    known = set(serialization.LAYER_STATE) | serialization.STATELESS_LAYERS
    assert set(nn.Module.layer_types()) <= known
    model = nn.Sequential(nn.Conv2d(3, 4, (3, 2), bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Dropout(0.1), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Sequential(nn.Linear(20, 7), nn.Tanh(), nn.Linear(7, 2, False)),
                          nn.Conv2d(1, 1, 5), nn.AvgPool2d(2), nn.Sigmoid())
    expected = {name: value.shape for name, value in model.state_dict().items()}
    assert serialization.state_shapes(serialization.architecture(model), "m") == expected


@pytest.mark.parametrize("layers, shape", [
    # The README's Python example: the first Linear fixes the input.
    ([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10)], [784]),
    ([nn.Flatten(), nn.Linear(20, 4)], [20]),
    # LeNet-5's convolutions fix no size; its Linear(400, 120) does: 28 x 28 is the smallest.
    ([nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 10)], [1, 28, 28]),
    ([nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 5)], [3, 8, 8]),
    # Global pooling takes any size: nothing is recorded rather than a guess.
    ([nn.Conv2d(1, 4, 3), nn.AvgPool2d(2), nn.Flatten()], None),
    ([nn.ReLU()], None),
])
def test_save_records_the_input_shape_the_first_layer_fixes(tmp_path, layers, shape):
    model = nn.Sequential(*layers)
    dlsys.save(model, tmp_path / "m.npz")
    assert dlsys.load(tmp_path / "m.npz").metadata.get("input_shape") == shape
    assert model.training  # inferring built an eval-mode graph and restored the mode


def test_save_takes_an_input_shape(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AvgPool2d(2), nn.Flatten())
    dlsys.save(model, tmp_path / "m.npz", input_shape=(1, 10, 10))
    assert dlsys.load(tmp_path / "m.npz").metadata == {"input_shape": [1, 10, 10]}
    dlsys.save(model, tmp_path / "m.npz", metadata={"input_shape": [1, 12, 12]})
    assert dlsys.load(tmp_path / "m.npz").metadata == {"input_shape": [1, 12, 12]}
    for bad in ("784", (0, 3), (2.5,), 7):
        with pytest.raises(ArgumentTypeError, match="input_shape must be a tuple of positive"):
            dlsys.save(model, tmp_path / "bad.npz", input_shape=bad)
