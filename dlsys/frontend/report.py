"""What a training run leaves in its output directory besides the checkpoint: metrics per
epoch as JSON and CSV, a PNG of the loss and accuracy curves, and the final parameters.

A history row is a dict per epoch: ``epoch`` and any of ``loss``, ``val_loss``, ``train_acc``,
``val_acc`` (floats), ``batch_losses`` (each batch's loss, in order) and timings. Rows resumed
from an older checkpoint may lack some keys; every writer here takes what is there.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from dlsys.data.mnist import dataset_name
from dlsys.frontend.checkpoint import atomic_file

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
PLOT_PNG = "curves.png"
PARAMS_NPZ = "params.npz"
# Significant digits kept of every float in the metrics files: float32 training holds no
# more than about seven, and 0.8549000000000001 only hides the figure a reader wants.
FLOAT_DIGITS = 6


def rounded(value):
    """``value`` with every float (in dicts and lists too) cut to :data:`FLOAT_DIGITS`
    significant digits, numpy scalars and arrays made plain Python, NaN and infinity ``None``
    (JSON has no such numbers; ``null`` says there is no value)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return float(f"{value:.{FLOAT_DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return rounded(value.tolist())
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


def write_metrics(out_dir: str | os.PathLike, history: list[dict], summary: dict) -> None:
    """``metrics.json`` (``{**summary, "epochs": history}``, every float but the settings'
    rounded) and ``metrics.csv`` (one row per epoch, its scalar columns: lists such as
    ``batch_losses`` are in the JSON only)."""
    out_dir = Path(out_dir)
    history = rounded(history)
    # The settings are the run's inputs, kept exact (a learning rate as it was given).
    summary = {key: value if key == "settings" else rounded(value)
               for key, value in summary.items()}
    with atomic_file(out_dir / METRICS_JSON) as f:
        f.write(json.dumps({**summary, "epochs": history}, indent=2, allow_nan=False).encode())
    text = io.StringIO()
    # Every scalar column any row has, in order of appearance: rows resumed from a checkpoint
    # need not name the same metrics as those written since.
    columns = list(dict.fromkeys(key for row in history for key, value in row.items()
                                 if not isinstance(value, (list, dict))))
    if columns:
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
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


# (key, legend label, colour) of the per-epoch curves in each panel.
_LOSS_CURVES = (("loss", "training (epoch mean)", "tab:blue"),
                ("val_loss", "validation", "tab:orange"))
_ACCURACY_CURVES = (("train_acc", "training", "tab:blue"),
                    ("val_acc", "validation", "tab:green"))


def _batch_loss_curve(history: list[dict]) -> tuple[list[float], list[float]]:
    """Each batch's loss at its place in the run: batch ``i`` of ``n`` in epoch ``e`` at
    ``e - 1 + i / n``; an epoch without the list leaves a gap."""
    xs: list[float] = []
    ys: list[float] = []
    for row in history:
        losses = row.get("batch_losses") or []
        if not losses:
            xs.append(row["epoch"])
            ys.append(math.nan)
        for i, loss in enumerate(losses, start=1):
            xs.append(row["epoch"] - 1 + i / len(losses))
            ys.append(loss)
    return xs, ys


def _title(title: str, summary: dict | None) -> str:
    """``title``, then the data set's name and the test accuracy (a language model's
    validation bits per character) where ``summary`` has them."""
    facts = []
    data = ((summary or {}).get("settings") or {}).get("data")
    if data:
        facts.append(dataset_name(data))
    test_acc = (summary or {}).get("test_acc")
    if test_acc is not None and math.isfinite(test_acc):
        facts.append(f"test accuracy {100 * test_acc:.2f}%")
    bits = (summary or {}).get("val_bpc")  # a language model's
    if bits is not None and math.isfinite(bits):
        facts.append(f"validation {bits:.3f} bits per character")
    return title + ("\n" + ", ".join(facts) if facts else "")


def plot_curves(out_dir: str | os.PathLike, history: list[dict], title: str,
                summary: dict | None = None) -> Path:
    """Loss (left) and accuracy (right) per epoch, as ``curves.png``: see :func:`draw_curves`."""
    fig = draw_curves(history, title, summary)
    # After draw_curves, which chose the headless backend.
    from matplotlib import pyplot as plt

    path = Path(out_dir) / PLOT_PNG
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def draw_curves(history: list[dict], title: str, summary: dict | None = None):
    """The figure of :func:`plot_curves` (a matplotlib Figure; close it when done).

    Draws whichever of the history's metrics exist: the loss of every batch behind the
    epoch means, validation loss, training and validation accuracy. ``summary``, as given to
    :func:`write_metrics`, adds the data set's name and the test accuracy to the title, the
    test accuracy as a line, and a mark at each epoch in ``resumed_at`` (the epochs a run was
    resumed after).
    """
    import matplotlib

    # A headless backend: training runs on servers without a display.
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summary = summary or {}
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.4))
    _draw_metrics(ax_loss, ax_acc, history, epochs)
    test_acc = summary.get("test_acc")
    if test_acc is not None and math.isfinite(test_acc):
        ax_acc.axhline(100 * test_acc, color="tab:red", linestyle=":",
                       label=f"test, after the last epoch ({100 * test_acc:.2f}%)")
    for ax in (ax_loss, ax_acc):
        _finish_axes(ax, epochs, summary.get("resumed_at") or [])
    if not ax_acc.get_lines():
        # A run with --val-size 0 and no test accuracy (yet): say so, rather
        # than leave an empty frame that looks like a failed plot.
        ax_acc.text(0.5, 0.5, "no accuracy recorded", transform=ax_acc.transAxes,
                    ha="center", va="center", color="grey")
    ax_loss.set(xlabel="epoch", ylabel="mean cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    fig.suptitle(_title(title, summary))
    fig.tight_layout()
    return fig


def _draw_metrics(ax_loss, ax_acc, history: list[dict], epochs: list) -> None:
    """The history's curves: each batch's loss faintly behind the loss per epoch, and every
    per-epoch metric some row has (the last finite value in its label); a metric no row has
    draws nothing."""
    xs, ys = _batch_loss_curve(history)
    if any(math.isfinite(y) for y in ys):
        ax_loss.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=0.8,
                     label="training (each batch)")
    # A row without a metric (one resumed from a sparser checkpoint) is a gap in its curve;
    # markers keep a one-epoch run's single point visible.
    for ax, curves, scale in ((ax_loss, _LOSS_CURVES, 1), (ax_acc, _ACCURACY_CURVES, 100)):
        for key, label, colour in curves:
            if any(key in row for row in history):
                values = [scale * row[key] if row.get(key) is not None else math.nan
                          for row in history]
                last = next((v for v in reversed(values) if math.isfinite(v)), None)
                if last is not None:
                    label += f" (last {last:.2f}%)" if scale == 100 else f" (last {last:.4f})"
                ax.plot(epochs, values, marker="o", markersize=5, color=colour, label=label)


def _finish_axes(ax, epochs: list, resumed_at: list) -> None:
    """One panel's frame: a dashed mark at each epoch a run was resumed after, whole-epoch
    ticks over the epochs shown, a grid, and a legend when anything is labelled."""
    from matplotlib.ticker import MaxNLocator

    for number, epoch in enumerate(resumed_at):
        ax.axvline(epoch, color="grey", linestyle="--", linewidth=1,
                   label="resumed" if number == 0 else None)
    # Whole epochs only: at one or two epochs matplotlib would tick 0.25, 0.5, ...
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs:
        # From the start of the first epoch shown, so a single epoch still spans a width.
        ax.set_xlim(min(epochs) - 1, max(epochs) + 0.25)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
