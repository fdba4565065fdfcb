"""ONNX inference: dlsys's ``InferenceSession`` against onnxruntime's on the same files, and
how long a large model takes to import and run once.

- **Small models**: the MLP 784-256-100-10 and LeNet-5 (conv 6@5x5 padded, max pool, conv
  16@5x5, average pool, dense 120-84-10) at batch 1 and 256, built with dlsys.nn and
  written by ``dlsys.onnx.export``; beside them PyTorch's eager call of the same layers
  and weights under ``torch.inference_mode``, on the same threads. Targets (issue 27): at
  batch 1 at most 0.8x onnxruntime's latency; at batch 256 at most 0.8x for LeNet-5 and
  1.0x for the MLP.
- **Models from the real world** (``--zoo cnn`` or ``all``, the default): ResNet-18 and
  MobileNet v2 on 224 x 224 images at batch 1 and 32, and with ``all`` a small BERT (4
  layers, hidden 256, 4 heads) over 128 tokens at batch 1: torchvision's and transformers'
  architectures with seeded random weights, exported by PyTorch's TorchScript exporter
  with a free batch axis. Target (issue 26): at most 1.0x onnxruntime at batch 32 for the
  CNNs.
- **Cold start** (unless ``--no-cold``): ResNet-50 (batch 1, 224 x 224) imported and run
  once in a fresh process with an empty kernel cache (``DLSYS_CACHE_DIR`` a new folder),
  then again in a second process reading every kernel from that cache. Target: under 60 s
  cold.

Each latency is the median of ``run()`` over many calls after warm-up (dlsys compiles at
its first call per shape). dlsys and onnxruntime run in processes of their own with the
same thread count, taking turns for ``--rounds`` rounds; each figure is the median of its
rounds, so that a busy spell of a shared machine weighs on both. The models from the real
world need torch, torchvision (``pip install --no-deps torchvision``) and transformers
beside onnx and onnxruntime; a model whose library is missing is skipped, saying so.

    python benchmarks/bench_onnx.py [--rounds 3] [--threads N] [--zoo none|cnn|all]
                                    [--no-cold] [--calls-scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WARMUP = 3
# Calls timed per figure, by batch: long enough to span a slow spell of a shared machine.
SMALL_CALLS = {1: 1000, 256: 200}
ZOO_CALLS = {1: 30, 32: 5}
IMAGE_BATCHES = (1, 32)
SEQUENCE = 128  # BERT-small's tokens


# ------------------------------------------------------------------ the files
def write_small_models(folder: Path, calls_scale: float) -> dict[str, dict]:
    """The MLP's and LeNet-5's files, written by dlsys: ``{label: model}`` (see ``feeds``)."""
    import dlsys
    from dlsys import nn
    from dlsys.onnx import export

    dlsys.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 100), nn.ReLU(),
                        nn.Linear(100, 10))
    lenet = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                          nn.Linear(84, 10))
    models = {}
    for label, name, model, row in (("MLP 784-256-100-10", "mlp", mlp, [784]),
                                    ("LeNet-5", "lenet", lenet, [1, 28, 28])):
        export(model, (1, *row), folder / f"{name}.onnx")
        # The same weights for PyTorch: dlsys.nn's state dicts use PyTorch's names.
        np.savez(folder / f"{name}.npz", **{k: v.numpy() if hasattr(v, "numpy") else v
                                            for k, v in model.state_dict().items()})
        models[label] = _model(folder / f"{name}.onnx", row, SMALL_CALLS, calls_scale)
        models[label]["torch"] = {"name": name, "state": str(folder / f"{name}.npz")}
    return models


def torch_small_model(spec: dict):
    """The PyTorch twin of a small model (the same layers, the same weights), called under
    ``torch.inference_mode`` as a PyTorch user serves it."""
    import torch
    from torch import nn

    if spec["name"] == "mlp":
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 100), nn.ReLU(),
                              nn.Linear(100, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                              nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                              nn.Linear(84, 10))
    with np.load(spec["state"]) as state:
        model.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    return run


def export_zoo_models(folder: Path, which: str, calls_scale: float) -> dict[str, dict]:
    """ResNet-18's and MobileNet v2's files (and BERT-small's where ``which`` is "all"),
    written by PyTorch's TorchScript exporter with a free batch axis."""
    from dlsys.testing import zoo

    models = {}
    for name, label in (("resnet18", "ResNet-18"), ("mobilenet_v2", "MobileNet v2")):
        try:
            path = zoo.export(name, folder, side=224, free_batch=True)
        except ImportError as e:
            print(f"skipping {label}: {e}")
            continue
        models[label] = _model(path, [3, 224, 224], ZOO_CALLS, calls_scale)
    if which == "all":
        try:
            models[f"BERT-small (seq {SEQUENCE})"] = _model(
                _export_bert(folder), "tokens", {1: ZOO_CALLS[1]}, calls_scale)
        except ImportError as e:
            print(f"skipping BERT: {e}")
    return models


def _model(path: Path, row, calls: dict[int, int], calls_scale: float) -> dict:
    """How a child process runs one file: its path, one batch row's shape (or "tokens"),
    and the calls timed at each batch."""
    return {"path": str(path), "row": row,
            "calls": {str(b): max(1, round(n * calls_scale)) for b, n in calls.items()}}


def _export_bert(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024,
                        max_position_embeddings=SEQUENCE, attn_implementation="eager")
    bert = BertModel(config).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids).last_hidden_state

    path = folder / "bert.onnx"
    with torch.no_grad():
        torch.onnx.export(LastHidden(bert), (torch.zeros(1, SEQUENCE, dtype=torch.int64),),
                          str(path), dynamo=False, input_names=["input_ids"],
                          output_names=["y"], opset_version=17)
    return path


# ------------------------------------------------------------- in a child process
def feeds(model: dict, batch: int) -> np.ndarray:
    rng = np.random.default_rng(batch)
    if model["row"] == "tokens":
        return rng.integers(0, 1000, size=(batch, SEQUENCE), dtype=np.int64)
    return rng.random((batch, *model["row"]), np.float32)


def measure(system: str, models: dict[str, dict], threads: int) -> dict:
    """Median milliseconds per ``run()`` for each model and batch, in this process."""
    from dlsys.testing.machine import onnx_session_maker

    if system == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        InferenceSession = onnx_session_maker(system, threads)  # noqa: N806 - either's name

    results = {}
    for label, model in models.items():
        if system == "torch":
            run = torch_small_model(model["torch"])
        else:
            session = InferenceSession(model["path"])
            name = session.get_inputs()[0].name

            def run(x, session=session, name=name):
                return session.run(None, {name: x})
        for batch, calls in model["calls"].items():
            x = feeds(model, int(batch))
            for _ in range(WARMUP):
                run(x)
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                run(x)
                samples.append(time.perf_counter() - start)
            results[f"{label}|{batch}"] = statistics.median(samples) * 1e3
    return results


# ------------------------------------------------------------------ the tables
def latency_table(models: dict[str, dict], threads: int, rounds: int,
                  decimals: int) -> list[str]:
    """The ratio table of ``models``, dlsys and onnxruntime taking turns."""
    from dlsys.testing.machine import ratio_table, take_turns

    results = take_turns(__file__, ("dlsys", "onnxruntime"), threads, rounds,
                         "--models", json.dumps(models))
    return ratio_table(results, "dlsys", "onnxruntime", decimals=decimals)


def small_models_table(folder: Path, threads: int, rounds: int, calls_scale: float,
                       with_torch: bool) -> list[str]:
    """The MLP and LeNet-5 at batch 1 and 256, against onnxruntime and PyTorch's eager
    calls (targets, issue 27: at most 0.8x onnxruntime at batch 1)."""
    from dlsys.testing.machine import take_turns

    systems = ("dlsys", "onnxruntime", "torch") if with_torch else ("dlsys", "onnxruntime")
    results = take_turns(__file__, systems, threads, rounds, "--models",
                         json.dumps(write_small_models(folder, calls_scale)))
    medians = {system: {key: statistics.median(r[key] for r in runs)
                        for key in runs[0]} for system, runs in results.items()}
    lines = ["| model | batch | dlsys ms | onnxruntime ms | dlsys / onnxruntime |"
             + (" PyTorch ms | dlsys / PyTorch |" if with_torch else ""),
             "|---|---|---|---|---|" + ("---|---|" if with_torch else "")]
    for key, ours in medians["dlsys"].items():
        name, batch = key.split("|")
        other = medians["onnxruntime"][key]
        line = f"| {name} | {batch} | {ours:.3f} | {other:.3f} | {ours / other:.2f} |"
        if with_torch:
            torch_ms = medians["torch"][key]
            line += f" {torch_ms:.3f} | {ours / torch_ms:.2f} |"
        lines.append(line)
    return lines


def zoo_models_table(folder: Path, which: str, threads: int, rounds: int,
                     calls_scale: float) -> list[str]:
    """ResNet-18 and MobileNet v2 at batch 1 and 32 (and BERT-small with ``all``)."""
    models = export_zoo_models(folder, which, calls_scale)
    return latency_table(models, threads, rounds, 2) if models else []


def cold_start(folder: Path, threads: int) -> tuple[float, float] | None:
    """Seconds to import ResNet-50 and run it once, with an empty kernel cache and then
    with the cache the first process filled, each in a fresh process."""
    from dlsys.testing import zoo

    try:
        path = zoo.export("resnet50", folder, side=224)
    except ImportError as e:
        print(f"skipping the cold start: {e}")
        return None
    script = ("import sys, time, numpy as np\nstart = time.perf_counter()\n"
              "from dlsys.onnx import InferenceSession\n"
              "s = InferenceSession(sys.argv[1])\n"
              "s.run(None, {'x': np.zeros((1, 3, 224, 224), np.float32)})\n"
              "print(time.perf_counter() - start)\n")
    env = dict(os.environ, DLSYS_CACHE_DIR=str(folder / "cache"), TVM_NUM_THREADS=str(threads))
    times = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script, str(path)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"cold start failed: {done.stderr.strip().splitlines()[-1:]}")
            return None
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return times[0], times[1]


def main() -> None:
    from dlsys.testing.machine import answered_as_child, comparison_parser

    parser = comparison_parser(__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=("none", "cnn", "all"), default="all",
                        help="the models from the real world: none, the CNNs, or the CNNs "
                             "and BERT-small")
    parser.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                        help="time ResNet-50's import and first run with an empty cache")
    parser.add_argument("--calls-scale", type=float, default=1.0,
                        help="scale the calls timed per figure (a quick look: 0.01)")
    args = parser.parse_args()
    if answered_as_child(args, measure):
        return
    try:
        import onnx  # noqa: F401 - dlsys.onnx's dependency, checked before any work
        import onnxruntime
    except ImportError:
        # make bench sets up dlsys's runtime dependencies only; this one is optional.
        print("bench_onnx: skipped (pip install onnx onnxruntime to run it)")
        return
    try:
        import torch  # noqa: F401 - the exporter of the models from the real world
        has_torch = True
    except ImportError:
        print("bench_onnx: PyTorch's column, the models from the real world and the cold "
              "start are skipped (they need torch)")
        args.zoo, args.cold, has_torch = "none", False, False

    from dlsys.kernels import thread_count
    from dlsys.testing.machine import cpu_description

    threads = args.threads or thread_count(None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = small_models_table(folder, threads, args.rounds, args.calls_scale, has_torch)
        zoo = ([] if args.zoo == "none" else
               zoo_models_table(folder, args.zoo, threads, args.rounds, args.calls_scale))
        cold = cold_start(folder, threads) if args.cold else None
    print(f"CPU: {cpu_description()}; {threads} thread(s) each; onnxruntime "
          f"{onnxruntime.__version__}; median of {args.rounds} rounds")
    print("\n".join(small))
    if zoo:
        print()
        print("\n".join(zoo))
    if cold is not None:
        print(f"\nResNet-50 import and first run: {cold[0]:.1f} s with an empty kernel cache "
              f"(target under 60 s), {cold[1]:.1f} s in a second process reading the cache")


if __name__ == "__main__":
    main()
