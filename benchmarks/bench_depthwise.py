"""Depthwise 3x3 convolutions, MobileNet v2's layers: dlsys's depthwise kernel against
PyTorch's ``F.conv2d(groups=C)``, forward only, float32.

Cases: each depthwise layer shape of MobileNet v2 at 224x224 (channels, input size, stride),
batch 8 by default. dlsys runs a graph of the one convolution through its executor (the
feed bound in place); PyTorch the call under ``torch.no_grad``, with the same thread count.
Both take turns over several rounds; each figure is the fastest of the repeats of a call in
all rounds: on a shared machine a busy spell only ever slows a call down, and the fastest call
is the one least disturbed, for both alike.

    python benchmarks/bench_depthwise.py [--batch 8] [--repeats 20] [--rounds 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from dlsys import autodiff as ad
from dlsys.kernels import available_cpus
from dlsys.ops.conv import conv2d_op
from dlsys.testing.machine import call_times, cpu_description

# (channels, input height = width, stride): MobileNet v2's depthwise layers.
LAYERS = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
          (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]
WARMUP = 3


def time_call(call, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``call()``, in microseconds, after warm-up calls."""
    return min(call_times(call, repeats, WARMUP))


def measure(channels: int, size: int, stride: int, args) -> tuple[float, float]:
    """(dlsys, PyTorch) microseconds of one layer, after checking that both agree."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, channels, size, size)).astype(np.float32)
    filters = rng.normal(size=(channels, 1, 3, 3)).astype(np.float32)
    x, w = ad.Variable("x"), ad.Variable("w")
    executor = ad.Executor([conv2d_op(x, w, stride, 1, groups=channels)], dtype="float32")
    feeds = {x: images, w: filters}
    tx, tw = torch.from_numpy(images), torch.from_numpy(filters)

    def torch_call():
        with torch.no_grad():
            return F.conv2d(tx, tw, stride=stride, padding=1, groups=channels)

    got = executor.run(feeds, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_allclose(got, torch_call().numpy(), rtol=1e-4, atol=1e-4)
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(time_call(lambda: executor.run(feeds), args.repeats))
        theirs.append(time_call(torch_call, args.repeats))
    return min(ours), min(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = available_cpus()
    torch.set_num_threads(threads)
    print(f"CPU: {cpu_description()}; {threads} threads; batch {args.batch}, float32")
    print(f"{'layer (C, HxW, stride)':>24} {'dlsys us':>10} {'torch us':>10} {'ratio':>7}")
    ratios = []
    for channels, size, stride in LAYERS:
        mine, theirs = measure(channels, size, stride, args)
        ratios.append(mine / theirs)
        print(f"{f'{channels}, {size}x{size}, s{stride}':>24} {mine:10.0f} {theirs:10.0f} "
              f"{mine / theirs:7.2f}")
    geomean = float(np.exp(np.mean(np.log(ratios))))
    print(f"geometric mean of dlsys / PyTorch time: {geomean:.2f} (below 1: dlsys is faster)")


if __name__ == "__main__":
    main()
