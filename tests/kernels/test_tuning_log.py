"""The user's tuning log: where it lives, who may write it, and what of it is believed."""

import json
import os
import stat
from dataclasses import asdict

import pytest

from dlsys.kernels import tuning
from dlsys.kernels.cpu import facts_for
from dlsys.kernels.matmul import search as mm

# An AVX2 register file (16 registers of 8 float32 lanes), whatever this machine's: the
# pathological tiles below are judged against it. No table ships tiles for "haswell".
PROBLEM = mm.MatmulProblem(1000, 256, 784, False, False, "float32", cpu=facts_for("haswell"))


@pytest.fixture
def named(tmp_path, monkeypatch):
    """The cache folder a user names, inside a folder of their own."""
    folder = tmp_path / "x"
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(folder))
    monkeypatch.setenv("DLSYS_TUNE", "0")
    return folder


def _write_log(folder, entries) -> None:
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "matmul_tuning.json").write_text(json.dumps({"version": tuning.LOG_VERSION,
                                                           "entries": entries}))


def test_log_lives_inside_the_named_folder_and_is_private(named, tmp_path):
    tuning.record(mm.LOG_KIND, PROBLEM.key(), {"mr": 6, "nr": 16, "nc": 256})
    log = named / "matmul_tuning.json"
    assert log.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    assert stat.S_IMODE(log.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(named.stat().st_mode) == 0o700
    assert tuning.lookup(mm.LOG_KIND, PROBLEM.key())["mr"] == 6


def test_log_in_a_folder_others_can_write_is_not_believed(named):
    _write_log(named, {PROBLEM.key(): {"mr": 2, "nr": 16, "nc": 256}})
    os.chmod(named, 0o777)
    with pytest.warns(RuntimeWarning, match="can be written by other users"):
        assert tuning.lookup(mm.LOG_KIND, PROBLEM.key()) is None


def test_deeply_nested_log_is_corrupt_not_a_recursion_error(named):
    log = tuning.tuning_log_path(mm.LOG_KIND)
    log.parent.mkdir(mode=0o700, exist_ok=True)
    depth = 200_000
    log.write_text('{"version": 1, "entries": ' + "[" * depth + "]" * depth + "}")
    assert tuning.lookup(mm.LOG_KIND, PROBLEM.key()) is None
    # The matmul still gets its tuned tiles (from the heuristic), not the untuned fallback.
    assert mm.choose_config(PROBLEM) == mm.heuristic_config(PROBLEM)


@pytest.mark.parametrize("tiles", [
    {"mr": 1, "nr": 1, "nc": 256},              # scalar: about 70x slower than tuned
    {"mr": 1, "nr": 8, "nc": 256},              # one accumulator
    {"mr": 8, "nr": 4, "nc": 256},              # half a vector
    {"mr": 8, "nr": 32, "nc": 256},             # 32 accumulators: spills registers
    {"mr": 6, "nr": 16, "nc": 16},              # a slab of one panel
    {"mr": 4, "nr": 16, "nc": 256, "vec_m": True},  # row vectors of half a vector
])
def test_pathological_logged_tiles_are_refused(named, tiles):
    _write_log(named, {PROBLEM.key(): tiles})
    assert mm.MatmulConfig.from_json(tiles, PROBLEM) is None
    assert mm.choose_config(PROBLEM) == mm.heuristic_config(PROBLEM)


def test_every_candidate_of_the_search_is_believed():
    # A config the search logged must be read back, or every process would search again.
    for problem in (PROBLEM, mm.MatmulProblem(1000, 10, 100, False, False, "float32"),
                    mm.MatmulProblem(3, 5, 7, True, True, "float64"),
                    mm.MatmulProblem(1, 1, 9, False, False, "float32")):
        for config in mm.candidate_configs(problem, limit=64):
            assert mm.MatmulConfig.from_json(asdict(config), problem) == config


def test_a_slower_logged_winner_does_not_hide_the_shipped_entry(named, monkeypatch):
    # A search timed on a busy machine logs tiles that only ran least badly; the table
    # shipped for this CPU model, measured quiet, is faster and wins. A hand-written entry
    # (no figure) and a faster logged one still win over the table.
    shipped = {"mr": 6, "nr": 32, "nc": 256, "gflops": 140.0}
    monkeypatch.setattr(tuning, "_shipped_entries", lambda kind: {PROBLEM.key(): shipped})
    _write_log(named, {PROBLEM.key(): {"mr": 5, "nr": 16, "nc": 256, "gflops": 1.1}})
    assert tuning.lookup(mm.LOG_KIND, PROBLEM.key())["mr"] == 6
    _write_log(named, {PROBLEM.key(): {"mr": 5, "nr": 16, "nc": 256, "gflops": 150.0}})
    assert tuning.lookup(mm.LOG_KIND, PROBLEM.key())["mr"] == 5
    _write_log(named, {PROBLEM.key(): {"mr": 4, "nr": 16, "nc": 256}})
    assert tuning.lookup(mm.LOG_KIND, PROBLEM.key())["mr"] == 4
