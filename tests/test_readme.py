"""The README's Python example runs as written (on a small synthetic data set)."""

from __future__ import annotations

import re
from pathlib import Path

from dlsys.testing.synthetic import write_idx_dataset

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(),
                                                re.DOTALL) if "minimize" in block]
    monkeypatch.setenv("DLSYS_DATA", str(write_idx_dataset(tmp_path / "data", num_train=1200,
                                                           num_test=200)))
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - our own README's code
    out = capsys.readouterr().out
    assert "epoch 2: loss" in out and "test accuracy" in out
    assert (tmp_path / "mlp.npz").exists()
