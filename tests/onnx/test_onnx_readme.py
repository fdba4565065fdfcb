"""The README's ONNX example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("onnx")

README = Path(__file__).resolve().parents[2] / "README.md"


def test_onnx_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(),
                                                re.DOTALL) if "dlsys.onnx.export" in block]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - our own README's code
    assert capsys.readouterr().out.splitlines() == [
        "['batch', 784]", "['0.weight', '0.bias', '2.weight', '2.bias']"]
    assert (tmp_path / "mlp.onnx").exists()
