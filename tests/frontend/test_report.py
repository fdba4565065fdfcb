"""The run's report files from a history whose first rows came from a sparser checkpoint."""

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
