"""The README's Python examples run as written (on small data sets)."""

from __future__ import annotations

import re
from pathlib import Path

from dlsys.testing.synthetic import write_idx_dataset

README = Path(__file__).resolve().parent.parent / "README.md"


def _example(marker: str) -> str:
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(),
                                                re.DOTALL) if marker in block]
    return example


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    example = _example("load_dataset")
    monkeypatch.setenv("DLSYS_DATA", str(write_idx_dataset(tmp_path / "data", num_train=1200,
                                                           num_test=200)))
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - our own README's code
    out = capsys.readouterr().out
    assert "epoch 2: loss" in out and "test accuracy" in out
    assert (tmp_path / "mlp.npz").exists()


def test_gpt_example_runs(tmp_path, capsys):
    # A short text of its own, and a few steps: the example's corpus and loop, shrunk.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    example = _example("TinyGPT")
    assert "load_text(None" in example and "range(300)" in example
    example = example.replace("load_text(None", f"load_text({str(corpus)!r}")
    exec(compile(example.replace("range(300)", "range(3)"), "README.md", "exec"), {})  # noqa: S102
    assert "bits per character" in capsys.readouterr().out
