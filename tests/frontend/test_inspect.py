"""``dlsys inspect``, through the real entry point: the program and memory plan it prints for
built-in models, model files and ONNX files, its one-line errors, and the PNG it draws."""

import re

import pytest
from cli_runner import run_cli
from PIL import Image

import dlsys
from dlsys import nn
from dlsys.frontend.cli import build_parser
from dlsys.onnx import export

# One row per step: its index, then the kernel (or an alias) and the rest of the columns.
STEP_ROW = re.compile(r"^(\d+)\s+\S")
TOTALS = re.compile(r"planned (\d+) bytes in (\d+) buffers")


def _inspect(capsys, *argv: str) -> str:
    assert run_cli(["inspect", *argv]) == 0
    return capsys.readouterr().out


def _step_count(out: str) -> int:
    header = re.search(r"program: (\d+) steps", out)
    assert header, out
    rows = [line for line in out.splitlines() if STEP_ROW.match(line)]
    # The storage table's rows start with a number too: the step table comes first.
    assert [int(STEP_ROW.match(r)[1]) for r in rows[:int(header[1])]] == list(
        range(int(header[1])))
    return int(header[1])


def _small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def test_mlp_prints_its_inference_program_and_plan(capsys):
    out = _inspect(capsys, "mlp")
    assert out.startswith("mlp: inference at batch 1 (eval mode)")
    assert _step_count(out) >= 3
    assert "matmul_epilogue" in out and "MatMul+bias_add+relu" in out
    assert "storage  bytes  holds in turn" in out
    planned = TOTALS.search(out)
    assert planned and int(planned[1]) > 0


def test_lenet_train_prints_the_training_step_and_says_the_update_is_not_in_it(capsys):
    out = _inspect(capsys, "lenet", "--train", "--batch-size", "8")
    assert out.startswith("lenet: training step at batch 8 (training mode)")
    assert "the optimiser's update is not a graph node" in out
    assert "conv2d" in out.lower() and "CrossEntropyGrad" in out
    # Every parameter's gradient is computed: more steps than the forward pass alone.
    assert _step_count(out) > 10


def test_a_memory_budget_shows_what_is_recomputed(capsys):
    assert run_cli(["inspect", "lenet", "--train", "--batch-size", "64", "--memory-budget",
                    "1KiB"]) == 2
    smallest = int(re.search(r"smallest is .*\((\d+) bytes", capsys.readouterr().err)[1])
    out = _inspect(capsys, "lenet", "--train", "--batch-size", "64", "--memory-budget",
                   str(smallest))
    assert re.search(r"recomputation: .* [1-9]\d* values computed again", out)
    assert "(recomputed)" in out  # the copies are steps of the program's table
    assert int(TOTALS.search(out)[1]) <= smallest


def test_saved_model_file(tmp_path, capsys):
    path = tmp_path / "small.npz"
    dlsys.save(_small_model(), path, input_shape=(784,))
    out = _inspect(capsys, str(path), "--batch-size", "4")
    assert out.startswith(f"{path}: inference at batch 4")
    assert "input [784] per image" in out
    assert _step_count(out) >= 2


def test_exported_onnx_file(tmp_path, capsys):
    path = tmp_path / "small.onnx"
    export(_small_model(), (1, 784), path)
    out = _inspect(capsys, str(path), "--train")
    assert out.startswith(f"{path}: training step")
    assert "gradients of 4 parameters" in out
    assert TOTALS.search(out)


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "nosuch: no such file, nor a built-in model (logreg, mlp, lenet, cnn)"),
    (["mlp", "--plot", "plan.svg"], "--plot plan.svg: name a .png file"),
])
def test_a_bad_target_is_one_line(capsys, argv, message):
    assert run_cli(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"dlsys: error: {message}\n"


def test_plot_writes_a_png(tmp_path, capsys):
    path = tmp_path / "plan.png"
    out = _inspect(capsys, "mlp", "--train", "--batch-size", "16", "--plot", str(path))
    assert out.rstrip().endswith(f"wrote {path}")
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 0 and image.size[1] > 0


def test_help_lists_inspect_and_its_flags_take_no_prefixes(capsys):
    assert not build_parser().commands["inspect"].allow_abbrev
    assert run_cli(["--help"]) == 0
    assert re.search(r"^\s+inspect\s+print a model's compiled program", capsys.readouterr().out,
                     re.MULTILINE)
