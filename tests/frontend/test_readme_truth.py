"""The README's sample output of ``dlsys train`` (no flags) and its list of the files a run
writes, checked against a real run on the default data set, so that they cannot drift from
what the command prints and writes (issue 24)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dlsys.data.mnist import DEFAULT_DATA_DIR

README = Path(__file__).resolve().parents[2] / "README.md"
SAMPLE_INTRO = "What `make train` (`dlsys train`, no flags) prints"
# Tile choices, and so the order in which kernels sum, differ between CPUs: the same run
# rounds differently in the last digits and drifts apart slowly over 10 epochs (the README
# notes the same against numpy). Half a percentage point and 0.01 of loss hold such drift
# and still catch a changed default, model or data order, which move far more.
ACCURACY_TOLERANCE = 0.5  # percentage points
LOSS_TOLERANCE = 0.01
NUMBER = re.compile(r"(\d+\.\d+)")

# 10 epochs of the MLP on Fashion-MNIST, and collecting the whole suite: 20-70 s on 2 cores.
pytestmark = pytest.mark.slow
needs_data = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(),
                                reason=f"Fashion-MNIST is not installed in {DEFAULT_DATA_DIR}")


def readme_sample() -> list[str]:
    """The lines of the code block that follows the README's sample-output sentence."""
    text = README.read_text()
    start = text.index(SAMPLE_INTRO)
    match = re.compile(r"```\n(.*?)```", re.DOTALL).search(text, start)
    assert match, "the README's sample output block is missing"
    return match.group(1).splitlines()


def mask(line: str) -> str:
    """``line`` with what differs from run to run replaced: times, and the run folder (the
    README's run goes to runs/mlp, the test's to a temporary folder)."""
    line = re.sub(r"\btime \S+", "time <t>", line)
    line = re.sub(r"\bready in \S+", "ready in <t>", line)
    return re.sub(r"\b(into|to) \S+$", r"\1 <out>", line)


def assert_same_line(expected: str, actual: str) -> None:
    """Equal text and figures, except losses and accuracies within the tolerances above."""
    expected_parts, actual_parts = NUMBER.split(mask(expected)), NUMBER.split(mask(actual))
    assert len(expected_parts) == len(actual_parts), f"README: {expected!r}\nrun:    {actual!r}"
    for i, (want, got) in enumerate(zip(expected_parts, actual_parts)):
        if i % 2 == 0:  # text between figures, and integer figures such as kernel calls
            assert want == got, f"README: {expected!r}\nrun:    {actual!r}"
        elif actual_parts[i + 1].startswith("%"):
            assert abs(float(want) - float(got)) <= ACCURACY_TOLERANCE, (expected, actual)
        elif actual_parts[i - 1].endswith("loss "):
            assert abs(float(want) - float(got)) <= LOSS_TOLERANCE, (expected, actual)
        else:  # working memory, learning rate: no rounding can move them
            assert want == got, f"README: {expected!r}\nrun:    {actual!r}"


def readme_run_files() -> set[str]:
    """The files the README's **Output.** paragraph says ``--out`` receives."""
    text = README.read_text()
    paragraph = text[text.index("**Output.**"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    return set(re.findall(r"`([\w-]+\.(?:json|npz|csv|png))`", paragraph))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[list[str], Path]:
    """The output lines and folder of ``dlsys train`` with no flags but a fresh --out
    (``--no-progress``: a pipe gets no progress bar anyway; said so that it cannot)."""
    out = tmp_path_factory.mktemp("readme-run") / "run"
    done = subprocess.run([sys.executable, "-m", "dlsys", "train", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return (done.stdout + done.stderr).splitlines(), out


@needs_data
def test_sample_output_is_a_real_run(default_run):
    lines, _ = default_run
    sample = readme_sample()
    position = 0
    for k, expected in enumerate(sample):
        if expected == "...":  # the README elides the middle epochs: skip to its next line
            following = sample[k + 1].split("  ")[0]
            while position < len(lines) and not lines[position].startswith(following):
                position += 1
            continue
        assert position < len(lines), f"the run ended before the README's {expected!r}"
        assert_same_line(expected, lines[position])
        position += 1
    assert position == len(lines), f"the run printed more: {lines[position:]}"


@needs_data
def test_files_written_are_the_readmes(default_run):
    lines, out = default_run
    # Hidden files (the folder's lock, .dlsys-lock) are dlsys's bookkeeping, not output.
    written = {path.name for path in out.iterdir() if not path.name.startswith(".")}
    assert readme_run_files() == written
    wrote = re.fullmatch(r"wrote (.*) to \S+", lines[-1])
    assert wrote, lines[-1]
    named = set(re.split(r", | and ", wrote.group(1)))
    assert named <= written, f"the last line names files the run did not write: {named}"


def test_test_count_is_the_readmes():
    # The README gives a round figure ("about 2,500 tests") so that it need not change with
    # every test added; within a tenth of the collected count it is still true.
    match = re.search(r"`make test` runs everything \(about ([\d,]+) tests", README.read_text())
    assert match, "the Tests section no longer says how many tests there are"
    claimed = int(match.group(1).replace(",", ""))
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", str(README.parent / "tests")],
                          capture_output=True, text=True, timeout=300, cwd=README.parent)
    collected = re.search(r"(\d+) tests? collected", done.stdout)
    assert collected, done.stdout[-2000:] + done.stderr[-2000:]
    assert abs(int(collected.group(1)) - claimed) <= claimed / 10, (collected.group(0), claimed)
