"""The README's set-up as a new user meets it: ``make train`` in a fresh clone, in a shell
with no venv active (issue 15). Installs dlsys into a new venv, so it takes half a minute or
more; pip's cache and the kernel cache are the user's, as they would be."""

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from dlsys.testing.synthetic import write_idx_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# What make and pytest put into the environment of the processes they start, and what an
# activated venv puts there: a new user's shell has none of them.
NOT_IN_A_NEW_SHELL = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MAKELEVEL",
                      "MFLAGS", "MAKEOVERRIDES", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def _fresh_clone(dest: Path) -> Path:
    """A clone of this repository with the working tree's uncommitted changes laid over it,
    so that the test checks the code under test rather than the last commit."""
    _git("clone", "--quiet", str(ROOT), str(dest))
    changed = _git("ls-files", "-z", "--modified", "--others", "--exclude-standard")
    for name in filter(None, changed.split("\0")):
        source, target = ROOT / name, dest / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        else:  # deleted in the working tree
            target.unlink(missing_ok=True)
    return dest


def _new_shell_environment(decoys: Path) -> dict[str, str]:
    """This process's environment as a new login shell would have it: no venv on PATH, and
    a ``dlsys`` and ``pytest`` first on PATH that fail, so that a Makefile that ran either
    instead of the venv's would be caught."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_NEW_SHELL}
    decoys.mkdir()
    for name in ("dlsys", "pytest"):
        decoy = decoys / name
        decoy.write_text(f"#!/bin/sh\necho 'the {name} on PATH ran' >&2\nexit 97\n")
        decoy.chmod(decoy.stat().st_mode | stat.S_IXUSR)
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not (Path(p).parent / "pyvenv.cfg").exists()]
    env["PATH"] = os.pathsep.join([str(decoys), *path])
    return env


def test_make_train_in_a_fresh_clone_without_a_venv(tmp_path):
    clone = _fresh_clone(tmp_path / "dlsys")
    assert not (clone / ".venv").exists()
    env = _new_shell_environment(tmp_path / "decoys")
    # A small data set of our own: the run must not depend on Fashion-MNIST being installed.
    env["DLSYS_DATA"] = str(write_idx_dataset(tmp_path / "data", num_train=1200, num_test=200))
    out = tmp_path / "run"
    result = subprocess.run(
        ["make", "train", f"ARGS=--epochs 1 --batch-size 100 --out {out}"], cwd=clone,
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "epoch 1/1" in result.stdout and "test acc" in result.stdout

    venv_python = clone / ".venv" / "bin" / "python"
    assert venv_python.exists(), "make train made no .venv"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoint.npz").is_file()
    # Lean: the test tools are the test extra's, installed by make test only.
    for tool in ("pytest", "hypothesis", "ruff"):
        found = subprocess.run([str(venv_python), "-c", f"import {tool}"], env=env,
                               capture_output=True)
        assert found.returncode != 0, f"make train installed {tool}"
    version = subprocess.run([str(venv_python), "-m", "dlsys", "--version"], env=env,
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("dlsys ")
