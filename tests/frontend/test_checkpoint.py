"""Checkpoints: a round trip restores everything, and no crash leaves an unloadable file."""

import os

import numpy as np
import pytest

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
