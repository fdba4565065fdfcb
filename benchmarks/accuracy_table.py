"""The README's accuracy table, measured: each row trained by the real ``dlsys train`` command.

Each row runs ``python -m dlsys train`` in a subprocess with the row's model, optimiser,
learning rate and batch size given explicitly (so the table states what ran even if a default
changes), into a fresh temporary ``--out``, and reads the validation and test accuracy from
the run's ``metrics.json``, as a user would. The "plain numpy" column comes from
``dlsys.testing.numpy_reference``: the same initial parameters, data order, loss and plain SGD
in numpy. It exists for the SGD rows of the dense models only (the reference has no
momentum, Adam or convolutions); the other rows print ``-``.

The output is the table's markdown rows, ready to paste into README.md ("## Training"), and
the date and CPU they were measured on, since tile choices (and so float rounding) differ
between CPUs.

    python benchmarks/accuracy_table.py [--rows logreg-sgd,mlp-sgd] [--epochs 10] [--data DIR]

All rows at 10 epochs take several minutes on 2 cores; the cnn is the slowest (about 15 s an
epoch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dlsys.testing.machine import cpu_description


@dataclass(frozen=True)
class Row:
    """One row of the table: its two label cells and the flags that train it."""

    model_label: str
    optimiser_label: str
    model: str
    optimizer: str
    lr: float
    batch_size: int
    numpy_reference: bool = False  # whether dlsys.testing.numpy_reference trains it too


# In the README's order. The learning rates are dlsys's defaults (dlsys.frontend.settings), so
# `dlsys train --model lenet` with no other flag is the LeNet SGD row.
ROWS = {
    "logreg-sgd": Row("logreg 784-10", "SGD 0.2", "logreg", "sgd", 0.2, 1000, True),
    "logreg-adam": Row("logreg 784-10", "Adam 1e-3", "logreg", "adam", 1e-3, 1000),
    "mlp-sgd": Row("MLP 784-256-100-10", "SGD 0.2", "mlp", "sgd", 0.2, 1000, True),
    "mlp-momentum": Row("MLP 784-256-100-10", "SGD momentum 0.9, 0.02", "mlp", "momentum",
                        0.02, 1000),
    "mlp-adam": Row("MLP 784-256-100-10", "Adam 1e-3", "mlp", "adam", 1e-3, 1000),
    "lenet-sgd": Row("LeNet-5, batch 256", "SGD 0.2", "lenet", "sgd", 0.2, 256),
    "lenet-adam": Row("LeNet-5, batch 256", "Adam 1e-3", "lenet", "adam", 1e-3, 256),
    "cnn-sgd": Row("cnn, batch 256", "SGD 0.05", "cnn", "sgd", 0.05, 256),
}
HEADER = ("| model | optimiser, lr | dlsys val / test | plain numpy, same init and order |\n"
          "|---|---|---|---|")


def percent_pair(val_acc: float, test_acc: float) -> str:
    """``82.87 % / 82.41 %``, the table's cell format."""
    return f"{100 * val_acc:.2f} % / {100 * test_acc:.2f} %"


def train_with_cli(row: Row, epochs: int, data: str | None) -> tuple[float, float]:
    """Validation and test accuracy of ``dlsys train`` run as a user runs it."""
    with tempfile.TemporaryDirectory(prefix="dlsys-accuracy-") as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "dlsys", "train", "--model", row.model,
                   "--optimizer", row.optimizer, "--lr", str(row.lr), "--batch-size",
                   str(row.batch_size), "--epochs", str(epochs), "--seed", "0",
                   "--out", str(out), "--no-progress"]
        if data is not None:
            command += ["--data", data]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(command[2:])} failed ({done.returncode}):\n{done.stderr}")
        metrics = json.loads((out / "metrics.json").read_text())
        return metrics["val_acc"], metrics["test_acc"]


def train_with_numpy(row: Row, epochs: int, data: str | None) -> tuple[float, float]:
    """Validation and test accuracy of the numpy reference from the same start and order."""
    from dlsys.data.mnist import load_dataset
    from dlsys.testing import numpy_reference as ref

    dataset = load_dataset(data)
    result = ref.train(row.model, dataset.train, dataset.val, epochs=epochs,
                       batch_size=row.batch_size, lr=row.lr, seed=0)
    return result.history[-1]["val_acc"], ref.accuracy(result.params, dataset.test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows to run, of {', '.join(ROWS)} (default all)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", help="data set for dlsys train --data (default: its default)")
    parser.add_argument("--no-numpy", action="store_true",
                        help="skip the numpy reference (it takes as long as dlsys's run)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")

    lines = [HEADER]
    for name in names:
        row = ROWS[name]
        started = time.perf_counter()
        dlsys_cell = percent_pair(*train_with_cli(row, args.epochs, args.data))
        numpy_cell = "-"
        if row.numpy_reference and not args.no_numpy:
            numpy_cell = percent_pair(*train_with_numpy(row, args.epochs, args.data))
        line = f"| {row.model_label} | {row.optimiser_label} | {dlsys_cell} | {numpy_cell} |"
        # Progress on stderr, so that stdout is the table alone.
        print(f"{name}: {time.perf_counter() - started:.0f}s  {line}", file=sys.stderr,
              flush=True)
        lines.append(line)
    print(f"Accuracy after {args.epochs} epochs, seed 0, measured "
          f"{datetime.date.today().isoformat()} on {cpu_description()}:\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
