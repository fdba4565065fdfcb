"""The run's report files: metrics rounded, and a plot of whatever metrics the history has,
including histories whose first rows came from a sparser checkpoint."""

import json

import numpy as np
import pytest

from dlsys.frontend import report

# Epoch 1 resumed from a checkpoint that holds only the loss; epoch 2 trained here.
HISTORY = [{"epoch": 1, "loss": 0.9},
           {"epoch": 2, "loss": 0.6, "epoch_time_s": 0.5, "val_acc": 0.8, "eval_time_s": 0.1}]


def test_metrics_csv_has_every_column(tmp_path):
    report.write_metrics(tmp_path, HISTORY, {"settings": {}})
    lines = (tmp_path / report.METRICS_CSV).read_text().splitlines()
    assert lines == ["epoch,loss,epoch_time_s,val_acc,eval_time_s", "1,0.9,,,",
                     "2,0.6,0.5,0.8,0.1"]


def test_curves_leave_a_gap_for_a_missing_metric(tmp_path):
    path = report.plot_curves(tmp_path, HISTORY, "resumed")
    assert path.read_bytes()[:4] == b"\x89PNG"


def _figure(history, summary=None, title="run"):
    """The plot's figure, closed after the test has read it."""
    import matplotlib.pyplot as plt

    fig = report.draw_curves(history, title, summary)
    plt.close(fig)
    return fig


def _lines(ax) -> dict[str, object]:
    """The axes' curves by legend label, without the " (last ...)" suffix."""
    return {line.get_label().split(" (last ")[0]: line for line in ax.get_lines()
            if not line.get_label().startswith("_")}


@pytest.mark.parametrize("epochs", [1, 2, 3, 10])
def test_epoch_ticks_are_whole_numbers(epochs):
    history = [{"epoch": e, "loss": 1.0 / e, "val_acc": 0.5} for e in range(1, epochs + 1)]
    for ax in _figure(history).axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert epochs in ticks


def test_one_epoch_draws_a_line_of_batch_losses_and_visible_points():
    history = [{"epoch": 1, "loss": 0.8, "batch_losses": [1.2, 0.9, 0.7, 0.6],
                "val_acc": 0.7}]
    ax_loss, ax_acc = _figure(history).axes
    batches = _lines(ax_loss)["training (each batch)"]
    np.testing.assert_allclose(batches.get_xdata(), [0.25, 0.5, 0.75, 1.0])
    assert batches.get_linestyle() == "-"
    assert _lines(ax_acc)["validation"].get_marker() == "o"
    # The single epoch spans a width: the axis starts where the epoch started.
    assert ax_loss.get_xlim()[0] == 0


def test_every_metric_present_is_drawn_and_only_those():
    full = [{"epoch": e, "loss": 1.0, "val_loss": 1.1, "train_acc": 0.8, "val_acc": 0.7,
             "batch_losses": [1.0, 1.0]} for e in (1, 2)]
    ax_loss, ax_acc = _figure(full).axes
    assert set(_lines(ax_loss)) == {"training (each batch)", "training (epoch mean)",
                                    "validation"}
    assert set(_lines(ax_acc)) == {"training", "validation"}
    np.testing.assert_allclose(_lines(ax_acc)["training"].get_ydata(), [80, 80])
    bare = [{"epoch": 1, "loss": 1.0}]
    ax_loss, ax_acc = _figure(bare).axes
    assert set(_lines(ax_loss)) == {"training (epoch mean)"} and not _lines(ax_acc)
    assert [text.get_text() for text in ax_acc.texts] == ["no accuracy recorded"]


def test_title_names_the_data_set_and_the_test_accuracy():
    summary = {"settings": {"data": "/usr/share/datasets/fashion-mnist"}, "test_acc": 0.84987}
    fig = _figure(HISTORY, summary, title="dlsys mlp")
    title = fig._suptitle.get_text()
    assert title.startswith("dlsys mlp") and "Fashion-MNIST" in title and "84.99%" in title
    assert "test, after the last epoch (84.99%)" in _lines(fig.axes[1])


def test_resumed_epochs_are_marked():
    history = [{"epoch": e, "loss": 1.0, "val_acc": 0.5} for e in range(1, 6)]
    for ax in _figure(history, {"resumed_at": [2, 4]}).axes:
        marks = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert sorted(line.get_xdata()[0] for line in marks) == [2, 4]
        assert "resumed" in _lines(ax)


def test_metrics_floats_are_rounded(tmp_path):
    history = [{"epoch": 1, "loss": 0.1 + 0.2, "val_acc": np.float32(0.8549),
                "epoch_time_s": 1 / 3, "batch_losses": [np.float32(0.1) * 3, 2 / 3]}]
    summary = {"settings": {"lr": 0.123456789, "data": "x"}, "test_acc": float("nan"),
               "resumed_at": [np.int64(1)]}
    report.write_metrics(tmp_path, history, summary)
    text = (tmp_path / report.METRICS_JSON).read_text()
    metrics = json.loads(text)
    assert metrics["epochs"] == [{"epoch": 1, "loss": 0.3, "val_acc": 0.8549,
                                  "epoch_time_s": 0.333333,
                                  "batch_losses": [0.3, 0.666667]}]
    assert metrics["test_acc"] is None and metrics["resumed_at"] == [1]
    assert metrics["settings"]["lr"] == 0.123456789
    assert "NaN" not in text
    # The CSV has one column per scalar metric; per-batch lists are in the JSON only.
    assert (tmp_path / report.METRICS_CSV).read_text().splitlines() == [
        "epoch,loss,val_acc,epoch_time_s", "1,0.3,0.8549,0.333333"]
