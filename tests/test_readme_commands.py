"""Every command of the README's "## Training" section, run top to bottom in a fresh folder,
twice, succeeds (issue 24: a second run must not trip over the first run's files).

The commands run as written through a shell (so ``~`` is expanded), with ``dlsys`` replaced
by this Python's ``-m dlsys`` and ``--epochs 1`` appended to each ``dlsys train`` (argparse
takes the last), in a HOME holding what they name: ``~/mnist`` (IDX files), ``~/mnist.pkl.gz``
(the classic pickle) and ``shoe.png`` in the working folder. ``$DLSYS_DATA`` names a small
synthetic data set, so the runs on the default data take seconds.

Twenty processes, each importing TVM (4 s of CPU) and training at most one epoch of 1,000
images: 140 s on the 2-core VM (314 s under other load), kernel cache warm, hence ``slow``. The cost
is the processes themselves; smaller data sets would save little.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dlsys.kernels.disk_cache import configured_dir
from dlsys.testing.synthetic import write_idx_dataset, write_pickle_dataset

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.slow


def training_commands() -> list[str]:
    """The command lines of the ``sh`` blocks in the README's "## Training" section, their
    comments removed."""
    text = README.read_text()
    section = text[text.index("\n## Training\n"):]
    section = section[:section.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def runnable(command: str) -> str:
    """``command`` as the test runs it: this Python's dlsys, one epoch for training."""
    assert command.startswith("dlsys "), f"not a dlsys command: {command!r}"
    line = f"{shlex.quote(sys.executable)} -m dlsys{command[len('dlsys'):]}"
    if command.startswith("dlsys train"):
        line += " --epochs 1"
    return line


def write_shoe_png(path: Path) -> None:
    """A dark shoe-like shape on a white background, as a photo of one would be."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (120, 90), 255)
    draw = ImageDraw.Draw(image)
    draw.polygon([(10, 70), (10, 35), (45, 30), (70, 50), (110, 58), (110, 72)], fill=30)
    image.save(path)


@pytest.fixture
def user_home(tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose HOME holds the data sets the README names."""
    home = tmp_path / "home"
    write_idx_dataset(home / "mnist", num_train=1200, num_test=200)
    write_pickle_dataset(home / "mnist.pkl.gz", sizes=(1000, 200, 200))
    env = dict(os.environ, HOME=str(home),
               DLSYS_DATA=str(write_idx_dataset(tmp_path / "default-data", num_train=1200,
                                                num_test=200, seed=1)),
               # The kernels are the same whatever HOME is: keep the user's compiled ones,
               # or each of the ~20 processes would compile its kernels again.
               DLSYS_CACHE_DIR=str(configured_dir()))
    return env


def test_readme_commands_run_twice(tmp_path: Path, user_home: dict[str, str]):
    commands = training_commands()
    assert any(c.startswith("dlsys predict") for c in commands), commands
    work = tmp_path / "clone"
    work.mkdir()
    write_shoe_png(work / "shoe.png")
    for attempt in (1, 2):
        for command in commands:
            done = subprocess.run(["bash", "-c", runnable(command)], cwd=work, env=user_home,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (f"run {attempt}: {command}\n{done.stdout}"
                                          f"\n{done.stderr}")
    # Each run without --out got a folder of its own: 5 the first time round, 5 the second.
    runs = sorted(p.name for p in (work / "runs").iterdir())
    assert len(runs) == 2 * sum(c.startswith("dlsys train") and "--out" not in c
                                for c in commands), runs
