"""ONNX inference latency: dlsys's ``InferenceSession`` against onnxruntime's, on the same files.

The models are the MLP 784-256-100-10 and LeNet-5 (conv 6@5x5 padded, max pool, conv 16@5x5,
average pool, dense 120-84-10), built with dlsys.nn and written by ``dlsys.onnx.export``, so
both runtimes read identical files. Each figure is the median latency of ``run()`` over many
calls after warm-up (dlsys compiles at its first call per shape). dlsys and onnxruntime run
in processes of their own with the same thread count, taking turns for several rounds; each
figure is the median of its rounds, so that a busy spell of a shared machine weighs on both.

    python benchmarks/bench_onnx.py [--rounds 3] [--threads N]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 256)
CALLS = {1: 1000, 256: 200}  # calls timed per figure: long enough to span a slow spell
WARMUP = 5


def write_models(folder: Path) -> dict[str, Path]:
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
    paths = {"MLP 784-256-100-10": (folder / "mlp.onnx", (784,)),
             "LeNet-5": (folder / "lenet.onnx", (1, 28, 28))}
    export(mlp, (1, 784), paths["MLP 784-256-100-10"][0])
    export(lenet, (1, 1, 28, 28), paths["LeNet-5"][0])
    return {name: str(path) for name, (path, _) in paths.items()}


def input_shape(name: str) -> tuple[int, ...]:
    return (784,) if name.startswith("MLP") else (1, 28, 28)


def measure(system: str, models: dict[str, str], threads: int) -> dict:
    """Median milliseconds per ``run()`` for each model and batch, in this process."""
    from dlsys.testing.machine import onnx_session_maker

    InferenceSession = onnx_session_maker(system, threads)  # noqa: N806 - either's name

    results = {}
    for name, path in models.items():
        session = InferenceSession(path)
        input_name = session.get_inputs()[0].name
        for batch in BATCHES:
            x = np.random.default_rng(batch).random((batch, *input_shape(name)), np.float32)
            for _ in range(WARMUP):
                session.run(None, {input_name: x})
            samples = []
            for _ in range(CALLS[batch]):
                start = time.perf_counter()
                session.run(None, {input_name: x})
                samples.append(time.perf_counter() - start)
            results[f"{name}|{batch}"] = statistics.median(samples) * 1e3
    return results


def main() -> None:
    from dlsys.testing.machine import answered_as_child, comparison_parser

    args = comparison_parser(__doc__.splitlines()[0]).parse_args()
    if answered_as_child(args, measure):
        return

    try:
        import onnx  # noqa: F401 - dlsys.onnx's dependency, checked before any work
        import onnxruntime
    except ImportError:
        # make bench sets up dlsys's runtime dependencies only; this one is optional.
        print("bench_onnx: skipped (pip install onnx onnxruntime to run it)")
        return

    from dlsys.kernels import thread_count
    from dlsys.testing.machine import cpu_description, ratio_table, take_turns

    threads = args.threads or thread_count(None)
    with tempfile.TemporaryDirectory() as folder:
        models = write_models(Path(folder))
        results = take_turns(__file__, ("dlsys", "onnxruntime"), threads, args.rounds,
                             "--models", json.dumps(models))
    print(f"CPU: {cpu_description()}; {threads} thread(s) each; onnxruntime "
          f"{onnxruntime.__version__}; median of {args.rounds} rounds")
    print("\n".join(ratio_table(results, "dlsys", "onnxruntime")))

if __name__ == "__main__":
    main()
