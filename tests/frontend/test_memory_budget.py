"""``dlsys train --memory-budget``: a budget out of reach is a one-line error naming the
smallest reachable; that one trains to the very parameters of a run without a budget, and
``--debug-memory`` says what was recomputed."""

import re

import numpy as np
import pytest
from cli_runner import run_cli as _run


def _train(data_dir, out, *flags) -> int:
    # Narrow layers over a whole batch of 200: activations outweigh the hidden weights, so
    # the smallest budget recomputes some.
    return _run(["train", "--model", "mlp", "--hidden", "32,32,32,32,32,32", "--data",
                 str(data_dir), "--val-size", "100", "--batch-size", "200", "--epochs", "1",
                 "--out", str(out), "--no-progress", *flags])


def test_the_smallest_budget_trains_the_same_parameters(capsys, data_dir, tmp_path):
    assert _train(data_dir, tmp_path / "far", "--memory-budget", "1KiB") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "memory budget 1.00 KiB is below" in error and "Traceback" not in error
    smallest = int(re.search(r"smallest is [\d.]+ \wiB \((\d+) bytes", error).group(1))
    assert _train(data_dir, tmp_path / "plain") == 0
    capsys.readouterr()
    assert _train(data_dir, tmp_path / "budget", "--memory-budget", str(smallest),
                  "--debug-memory") == 0
    stdout = capsys.readouterr().out
    assert re.search(r"recomputation: .* [1-9]\d* values computed again", stdout)
    assert "of the " in stdout and " budget" in stdout
    with np.load(tmp_path / "plain" / "params.npz") as plain, \
            np.load(tmp_path / "budget" / "params.npz") as budget:
        assert plain.files == budget.files
        for name in plain.files:
            np.testing.assert_array_equal(plain[name], budget[name], err_msg=name)


@pytest.mark.parametrize("size", ["64MB", "lots", "0"])
def test_unreadable_budgets_exit_2(capsys, size):
    assert _run(["train", "--memory-budget", size]) == 2
    assert "--memory-budget" in capsys.readouterr().err.strip().splitlines()[-1]
