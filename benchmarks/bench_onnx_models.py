"""ONNX models from the real world: dlsys's ``InferenceSession`` against onnxruntime's on
torchvision's and transformers' architectures (random weights, seeded), exported by
PyTorch's TorchScript exporter with a free batch axis, plus import and first-run compile
time with an empty kernel cache.

- **Latency**: ResNet-18 and MobileNet v2 on 224 x 224 images at batch 1 and 32, and a
  small BERT (4 layers, hidden 256, 4 heads) over 128 tokens at batch 1; the median of
  ``run()`` after warm-up. dlsys and onnxruntime run in processes of their own with the same
  thread count, taking turns for ``--rounds`` rounds; each figure is the median of its
  rounds. Target (issue 26): at most 1.0x onnxruntime at batch 32 for the CNNs.
- **Cold start**: ResNet-50 (batch 1, 224 x 224) imported and run once in a fresh process
  with an empty kernel cache (``DLSYS_CACHE_DIR`` a new folder), then again in a second
  process reading every kernel from that cache. Target: under 60 s cold.

Needs torch, torchvision (``pip install --no-deps torchvision``) and transformers beside
onnx and onnxruntime; a model whose library is missing is skipped, saying so.

    python benchmarks/bench_onnx_models.py [--rounds 3] [--threads N] [--no-cold]
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

IMAGE_BATCHES = (1, 32)
SEQUENCE = 128
CALLS = {1: 30, 32: 5}
WARMUP = 2


def export_models(folder: Path) -> dict[str, dict]:
    """The benchmark's ONNX files: ``{label: {"path", "input", "batches"}}``."""
    import torch

    from dlsys.testing import zoo

    models = {}
    for name, label in (("resnet18", "ResNet-18"), ("mobilenet_v2", "MobileNet v2")):
        try:
            module = zoo.build(name)
        except ImportError as e:
            print(f"skipping {label}: {e}")
            continue
        path = folder / f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(module, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                              input_names=["x"], output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        models[label] = {"path": str(path), "input": "image", "batches": list(IMAGE_BATCHES)}
    try:
        from transformers import BertConfig, BertModel
    except ImportError as e:
        print(f"skipping BERT: {e}")
        return models
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
    models[f"BERT-small (seq {SEQUENCE})"] = {"path": str(path), "input": "tokens",
                                             "batches": [1]}
    return models


def feeds(model: dict, batch: int) -> np.ndarray:
    rng = np.random.default_rng(batch)
    if model["input"] == "tokens":
        return rng.integers(0, 1000, size=(batch, SEQUENCE), dtype=np.int64)
    return rng.normal(size=(batch, 3, 224, 224)).astype(np.float32)


def measure(system: str, models: dict[str, dict], threads: int) -> dict:
    """Median milliseconds per ``run()`` for each model and batch, in this process."""
    from dlsys.testing.machine import onnx_session_maker

    InferenceSession = onnx_session_maker(system, threads)  # noqa: N806 - either's name

    results = {}
    for label, model in models.items():
        session = InferenceSession(model["path"])
        name = session.get_inputs()[0].name
        for batch in model["batches"]:
            x = feeds(model, batch)
            for _ in range(WARMUP):
                session.run(None, {name: x})
            samples = []
            for _ in range(CALLS[batch]):
                start = time.perf_counter()
                session.run(None, {name: x})
                samples.append(time.perf_counter() - start)
            results[f"{label}|{batch}"] = statistics.median(samples) * 1e3
    return results


def cold_start(folder: Path, threads: int) -> tuple[float, float] | None:
    """Seconds to import ResNet-50 and run it once, with an empty kernel cache and then
    with the cache the first process filled, each in a fresh process."""
    import torch

    from dlsys.testing import zoo

    try:
        module = zoo.build("resnet50")
    except ImportError as e:
        print(f"skipping the cold start: {e}")
        return None
    path = folder / "resnet50.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17)
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
    parser.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                        help="time ResNet-50's import and first run with an empty cache")
    args = parser.parse_args()
    if answered_as_child(args, measure):
        return
    try:
        import onnxruntime
        import torch  # noqa: F401 - the exporter
    except ImportError:
        print("bench_onnx_models: skipped (needs torch, onnx and onnxruntime)")
        return

    from dlsys.kernels import thread_count
    from dlsys.testing.machine import cpu_description, ratio_table, take_turns

    threads = args.threads or thread_count(None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = export_models(folder)
        results = take_turns(__file__, ("dlsys", "onnxruntime"), threads, args.rounds,
                             "--models", json.dumps(models))
        cold = cold_start(folder, threads) if args.cold else None
    print(f"CPU: {cpu_description()}; {threads} thread(s) each; onnxruntime "
          f"{onnxruntime.__version__}; median of {args.rounds} rounds")
    print("\n".join(ratio_table(results, "dlsys", "onnxruntime", decimals=2)))
    if cold is not None:
        print(f"ResNet-50 import and first run: {cold[0]:.1f} s with an empty kernel cache "
              f"(target under 60 s), {cold[1]:.1f} s in a second process reading the cache")


if __name__ == "__main__":
    main()
