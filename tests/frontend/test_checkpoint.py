"""Checkpoints: a round trip restores everything, and no crash leaves an unloadable file."""

import io
import os
import zipfile

import numpy as np
import pytest
from bombs import refusal_and_growth, write_npy_member

from dlsys.errors import DataError
from dlsys.frontend import checkpoint as ckpt
from dlsys.frontend.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dlsys.frontend.models import init_params, seed_streams


def _checkpoint(epoch: int) -> Checkpoint:
    _, rng = seed_streams(7)
    rng.permutation(100)
    return Checkpoint(epoch=epoch, params=init_params("logreg", epoch),
                      rng_state=rng.bit_generator.state,
                      metrics=[{"epoch": e, "loss": 1.0 / e} for e in range(1, epoch + 1)],
                      config={"model": "logreg", "lr": 0.2})


def _same(a: Checkpoint, b: Checkpoint) -> bool:
    return (a.epoch == b.epoch and a.metrics == b.metrics and a.config == b.config
            and a.rng_state == b.rng_state and a.params.keys() == b.params.keys()
            and all(np.array_equal(a.params[k], b.params[k]) for k in a.params))


def test_round_trip_restores_the_shuffling_stream(tmp_path):
    saved = _checkpoint(3)
    save_checkpoint(tmp_path / "c.npz", saved)
    loaded = load_checkpoint(tmp_path / "c.npz")
    assert _same(saved, loaded) and loaded.optimizer == "sgd" and loaded.optimizer_state == {}
    original, restored = np.random.default_rng(), np.random.default_rng()
    original.bit_generator.state = saved.rng_state
    restored.bit_generator.state = loaded.rng_state
    np.testing.assert_array_equal(original.permutation(1000), restored.permutation(1000))


def test_optimizer_state_slot(tmp_path):
    saved = _checkpoint(1)
    saved.optimizer, saved.optimizer_state = "momentum", {"v/W1": np.ones((2, 2), np.float32)}
    save_checkpoint(tmp_path / "c.npz", saved)
    loaded = load_checkpoint(tmp_path / "c.npz")
    assert loaded.optimizer == "momentum"
    np.testing.assert_array_equal(loaded.optimizer_state["v/W1"], np.ones((2, 2)))


def test_crash_before_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _checkpoint(1))

    def crash(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _checkpoint(2))
    monkeypatch.undo()
    assert _same(load_checkpoint(path), _checkpoint(1))
    assert os.listdir(tmp_path) == ["c.npz"]


def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _checkpoint(1))

    def half_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", half_write)
    with pytest.raises(OSError):
        save_checkpoint(path, _checkpoint(2))
    monkeypatch.undo()
    assert _same(load_checkpoint(path), _checkpoint(1))


def test_a_killed_writer_leaves_only_a_temp_file(tmp_path):
    # What SIGKILL during the write leaves behind: the old checkpoint and a partial temp file.
    path = tmp_path / "c.npz"
    save_checkpoint(path, _checkpoint(1))
    stale = tmp_path / (ckpt.TEMP_PREFIX + "c.npz.abc123")
    stale.write_bytes(b"PK\x03\x04 partial")
    assert _same(load_checkpoint(path), _checkpoint(1))
    ckpt.remove_stale_temp_files(tmp_path)
    assert not stale.exists() and path.exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 truncated zip"])
def test_unreadable_checkpoint(tmp_path, content):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_checkpoint_without_metadata(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, W1=np.zeros(3))
    with pytest.raises(DataError, match="malformed checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DataError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.npz")


def test_written_files_get_the_usual_mode(tmp_path):
    save_checkpoint(tmp_path / "c.npz", _checkpoint(1))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o666 & ~mask


def _trainer_checkpoint() -> Checkpoint:
    """A checkpoint as the trainer writes it: every setting, one metrics row per epoch."""
    _, rng = seed_streams(0)
    rng.permutation(100)
    settings = {"model": "logreg", "data": "/data", "batch_size": 20, "lr": 0.2, "seed": 0,
                "val_size": 100}
    metrics = [{"epoch": e, "loss": 0.5, "epoch_time_s": 0.1, "val_acc": 0.8,
                "eval_time_s": 0.01} for e in (1, 2)]
    return Checkpoint(2, init_params("logreg", 0), rng.bit_generator.state, metrics, settings)


def _set(field, key, value):
    def change(c):
        getattr(c, field)[key] = value
    return change


def _del(field, key):
    return lambda c: getattr(c, field).pop(key)


def _attr(field, value):
    return lambda c: setattr(c, field, value)


def _rng(**changes):
    def change(c):
        c.rng_state = {**c.rng_state, **changes}
    return change


BAD_CHECKPOINTS = [
    # (id, change, words the error must hold)
    ("batch -7", _set("config", "batch_size", -7), "batch_size"),
    ("batch abc", _set("config", "batch_size", "abc"), "batch_size"),
    ("batch 100.5", _set("config", "batch_size", 100.5), "batch_size"),
    ("batch true", _set("config", "batch_size", True), "batch_size"),
    ("val -1", _set("config", "val_size", -1), "val_size"),
    ("seed -1", _set("config", "seed", -1), "seed"),
    ("data 5", _set("config", "data", 5), "data"),
    ("lr 1e39", _set("config", "lr", 1e39), "lr"),
    ("lr 1e-50", _set("config", "lr", 1e-50), "lr"),
    ("lr text", _set("config", "lr", "fast"), "lr"),
    ("resnet", _set("config", "model", "resnet"), "resnet"),
    ("no model", _del("config", "model"), "model"),
    ("unknown setting", _set("config", "momentum", 0.9), "momentum"),
    ("no 0.weight", _del("params", "0.weight"), "0.weight"),
    ("extra W2", _set("params", "W2", np.zeros((10, 10), np.float32)), "W2"),
    ("bias (1, 10)", _set("params", "0.bias", np.zeros((1, 10), np.float32)), "0.bias"),
    ("weight float64", _set("params", "0.weight", np.zeros((10, 784))), "0.weight"),
    ("NaN weight", _set("params", "0.weight", np.full((10, 784), np.nan, np.float32)),
     "0.weight"),
    ("epoch -1", _attr("epoch", -1), "epoch"),
    ("epoch 10**12", _attr("epoch", 10**12), "epoch"),
    ("epoch 1.5", _attr("epoch", 1.5), "epoch"),
    ("metrics dict", _attr("metrics", {"epoch": 1}), "metrics"),
    ("metrics row", _attr("metrics", [{"epoch": 1}, {"loss": 1.0}]), "metrics row 2"),
    ("metrics NaN", _attr("metrics", [{"epoch": 1, "loss": float("nan")}, {"epoch": 2}]),
     "metrics row 1"),
    ("metrics text", _attr("metrics", [{"epoch": 1}, {"epoch": 2, "loss": "low"}]),
     "metrics row 2"),
    ("rng none", _attr("rng_state", None), "RNG"),
    ("rng MT19937", _rng(bit_generator="MT19937"), "RNG"),
    ("rng negative", _rng(state={"state": -5, "inc": 1}), "RNG"),
    ("rng float", _rng(state={"state": 1.5, "inc": 3}), "RNG"),
    ("rng has_uint32", _rng(has_uint32=5), "RNG"),
    ("optimizer 3", _attr("optimizer", 3), "optimizer"),
]


@pytest.mark.parametrize("change, words", [b[1:] for b in BAD_CHECKPOINTS],
                         ids=[b[0] for b in BAD_CHECKPOINTS])
def test_bad_checkpoint_contents_are_refused_at_load(tmp_path, change, words):
    checkpoint = _trainer_checkpoint()
    save_checkpoint(tmp_path / "c.npz", checkpoint)
    assert load_checkpoint(tmp_path / "c.npz").epoch == 2  # the unchanged one loads
    change(checkpoint)
    save_checkpoint(tmp_path / "c.npz", checkpoint)
    with pytest.raises(DataError, match="unusable checkpoint") as caught:
        load_checkpoint(tmp_path / "c.npz")
    assert words in str(caught.value) and str(tmp_path / "c.npz") in str(caught.value)


def test_huge_array_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _trainer_checkpoint())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("param/W9.npy", header.getvalue())
    with pytest.raises(DataError, match=r"member param/W9: its header declares float32 of "
                                        r"shape \(1000000, 1000000\) \(4000000000000 bytes\)"):
        load_checkpoint(path)


def test_deeply_nested_metadata_is_malformed_not_a_crash(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, meta=np.array("[" * 100_000 + "]" * 100_000))
    with pytest.raises(DataError, match="malformed checkpoint"):
        load_checkpoint(path)


def test_only_dlsys_temporary_files_are_removed(tmp_path):
    users = [tmp_path / ".tmp-notes", tmp_path / ".tmp-c.npz.abc123", tmp_path / "notes"]
    for path in users:
        path.write_text("a user's file")
    ours = tmp_path / (ckpt.TEMP_PREFIX + "c.npz.abc123")
    ours.write_bytes(b"PK partial")
    ckpt.remove_stale_temp_files(tmp_path)
    assert not ours.exists() and all(path.exists() for path in users)


def _with_members(path, members: dict[str, tuple[tuple[int, ...], int]]):
    """``path``'s checkpoint with members added: name -> (declared shape, zero bytes)."""
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        for name, (shape, zeros) in members.items():
            write_npy_member(archive, name, shape, zeros)
    return path


def test_unknown_members_are_refused_by_name_before_they_are_read(tmp_path):
    # Two honest arrays of 128 MiB (256 KB on disk) under names no checkpoint holds.
    path = tmp_path / "c.npz"
    save_checkpoint(path, _trainer_checkpoint())
    big = ((8192, 4096), 4 * 8192 * 4096)
    _with_members(path, {"extra0": big, "notes/extra1": big})
    assert path.stat().st_size < 2 << 20
    output, grown_kib = refusal_and_growth("from dlsys.frontend import checkpoint",
                                           f"checkpoint.load_checkpoint({str(path)!r})")
    assert grown_kib < 32 * 1024, f"loading took {grown_kib} KiB more memory"
    assert f"{path}: unknown checkpoint members extra0, notes/extra1" in output


def test_more_optimizer_state_than_adam_keeps_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _trainer_checkpoint())  # logreg: 31400 bytes of parameters
    _with_members(path, {"optim/exp_avg.0": ((10, 784), 31360),
                         "optim/exp_avg_sq.0": ((10, 784), 31360)})
    assert load_checkpoint(path).optimizer_state["exp_avg.0"].shape == (10, 784)
    _with_members(path, {"optim/velocity.0": ((10, 784), 31360)})
    with pytest.raises(DataError, match="94080 bytes of optimizer state for 31400 bytes of "
                                        "parameters"):
        load_checkpoint(path)


def test_a_checkpoint_over_the_total_bound(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _trainer_checkpoint())
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", 10000)
    with pytest.raises(DataError, match=f"{path}: its 3 arrays take .* bytes inflated, more "
                                        "than the 10000 a file may hold"):
        load_checkpoint(path)


def test_parameters_of_another_shape_are_refused_before_they_are_read(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint = _trainer_checkpoint()
    del checkpoint.params["0.weight"]
    save_checkpoint(path, checkpoint)
    # 128 MiB declared and held, where logreg's weight is 10 x 784.
    _with_members(path, {"param/0.weight": ((8192, 4096), 4 * 8192 * 4096)})
    output, grown_kib = refusal_and_growth("from dlsys.frontend import checkpoint",
                                           f"checkpoint.load_checkpoint({str(path)!r})")
    assert grown_kib < 32 * 1024, f"loading took {grown_kib} KiB more memory"
    assert "parameter 0.weight must be float32 of shape (10, 784), got float32 of shape " \
           "(8192, 4096)" in output
