"""What a training run leaves in its output directory besides the checkpoint: metrics per
epoch as JSON and CSV, a PNG of the loss and accuracy curves, and the final parameters."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from dlsys.frontend.checkpoint import atomic_file

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
PLOT_PNG = "curves.png"
PARAMS_NPZ = "params.npz"


def write_metrics(out_dir: str | os.PathLike, history: list[dict], summary: dict) -> None:
    """``metrics.json`` (``{"epochs": history, **summary}``) and ``metrics.csv`` (history)."""
    out_dir = Path(out_dir)
    with atomic_file(out_dir / METRICS_JSON) as f:
        f.write(json.dumps({**summary, "epochs": history}, indent=2).encode())
    text = io.StringIO()
    if history:
        # Every column any row has, in order of appearance: rows resumed from a checkpoint
        # need not name the same metrics as those written since.
        columns = list(dict.fromkeys(key for row in history for key in row))
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    with atomic_file(out_dir / METRICS_CSV) as f:
        f.write(text.getvalue().encode())


def write_params(out_dir: str | os.PathLike, params: dict[str, np.ndarray]) -> Path:
    """The trained parameters as ``params.npz``, one array per name (``W1``, ``b1``, ...)."""
    path = Path(out_dir) / PARAMS_NPZ
    with atomic_file(path) as f:
        np.savez(f, **params)
    return path


def plot_curves(out_dir: str | os.PathLike, history: list[dict], title: str) -> Path:
    """Training loss and validation accuracy per epoch, side by side, as ``curves.png``."""
    import matplotlib

    # A headless backend: training runs on servers without a display.
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    # A row without a metric (one resumed from a sparser checkpoint) is a gap in its curve.
    nan = float("nan")
    ax_loss.plot(epochs, [h.get("loss", nan) for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="loss")
    ax_acc.plot(epochs, [100 * h.get("val_acc", nan) for h in history], marker="o",
                color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(out_dir) / PLOT_PNG
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
