"""Start-up time: the first MLP training batch and epoch with an empty and a warm kernel cache.

Each measurement is a fresh Python process with ``DLSYS_CACHE_DIR`` pointing at a new
temporary directory: the first process compiles every kernel and exports it there, the second
loads them. Both processes also report how many kernels they compiled.

    python benchmarks/bench_startup.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, {bench_dir!r})
import bench_mlp_epoch as bench
from dlsys.kernels import build
compiled = []
original = build.compile_module
def counting(*args, **kwargs):
    compiled.append(args[2] if len(args) > 2 else kwargs.get("kind"))
    return original(*args, **kwargs)
build.compile_module = counting
images, labels = bench.make_data({steps})
imported = time.perf_counter()
first = bench.dlsys_epoch(images, labels, 1)
first()
first_batch = time.perf_counter()
bench.dlsys_epoch(images, labels, {steps})()
epoch = time.perf_counter()
print(json.dumps({{"import_and_data_s": imported - start, "first_batch_s": first_batch - imported,
                  "first_epoch_s": epoch - first_batch, "kernels_compiled": len(compiled)}}))
"""


def run_child(cache_dir: str, steps: int) -> dict:
    env = dict(os.environ, DLSYS_CACHE_DIR=cache_dir)
    code = CHILD.format(bench_dir=str(Path(__file__).parent), steps=steps)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps in the first epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlsys-cache-") as cache_dir:
        cold = run_child(cache_dir, args.steps)
        warm = run_child(cache_dir, args.steps)
    print(f"{'':22s} {'cold cache':>12s} {'warm cache':>12s}")
    for key, label in [("import_and_data_s", "import + data (s)"),
                       ("first_batch_s", "first batch (s)"),
                       ("first_epoch_s", "first epoch (s)"),
                       ("kernels_compiled", "kernels compiled")]:
        print(f"{label:22s} {cold[key]:12.3f} {warm[key]:12.3f}" if key.endswith("_s")
              else f"{label:22s} {cold[key]:12d} {warm[key]:12d}")
    print(f"\nfirst batch, cold / warm: {cold['first_batch_s'] / warm['first_batch_s']:.1f}x")


if __name__ == "__main__":
    main()
