"""Kill ``dlsys train`` mid-epoch with SIGKILL, resume it, and get the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlsys.frontend.checkpoint import load_checkpoint
from dlsys.testing.synthetic import write_idx_dataset

EPOCHS = 3


def _command(data_dir, out, *extra):
    return [sys.executable, "-m", "dlsys.frontend.cli", "train", "--model", "mlp",
            "--data", str(data_dir), "--val-size", "500", "--batch-size", "5", "--lr", "0.05",
            "--epochs", str(EPOCHS), "--seed", "3", "--out", str(out), "--no-progress", *extra]


def _params(out):
    with np.load(out / "params.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "data", num_train=4500, num_test=100, seed=4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(_command(data_dir, whole), check=True, env=env, timeout=300,
                   capture_output=True)

    victim = subprocess.Popen(_command(data_dir, broken), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    checkpoint = broken / "checkpoint.npz"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # into the second epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(checkpoint).epoch
    assert 1 <= killed_at < EPOCHS and not (broken / "params.npz").exists()

    result = subprocess.run(_command(data_dir, broken, "--resume"), env=env, timeout=300,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"after epoch {killed_at}" in result.stdout

    expected, resumed = _params(whole), _params(broken)
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    history = [json.loads((out / "metrics.json").read_text())["epochs"] for out in (whole, broken)]
    assert [(e["loss"], e["val_acc"]) for e in history[0]] == \
        [(e["loss"], e["val_acc"]) for e in history[1]]
