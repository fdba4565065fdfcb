"""Run under ``mpirun -n 2`` by ``test_clip_grad_norm.py``: a ``DistributedStep`` clipping
at ``max_grad_norm`` on each rank's half of every batch must reach the parameters and report
the norms of a one-process ``TrainStep`` on the whole batch (computed on each rank, with
parameters of its own). Prints a line on success, raises otherwise."""

import numpy as np

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.distributed import DistributedStep, rank, shard_slice, world_size
from dlsys.nn import functional as F
from dlsys.nn import init
from dlsys.optim import AdamW

MAX_NORM = 0.5


def model():
    with init.using_generator(np.random.default_rng(0)):
        net = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5))
    x, y = ad.Variable("x"), ad.Variable("y")
    return net, F.cross_entropy(net(x), y), x, y


def main() -> None:
    assert world_size() == 2
    rng = np.random.default_rng(1)
    data = [(rng.standard_normal((12, 7)).astype(np.float32) * 3,
             rng.integers(0, 5, 12).astype(np.float32)) for _ in range(5)]
    net, loss, x, y = model()
    step = DistributedStep(AdamW(net.parameters(), lr=0.01), loss, max_grad_norm=MAX_NORM)
    alone, alone_loss, ax, ay = model()
    reference = AdamW(alone.parameters(), lr=0.01).minimize(alone_loss, max_grad_norm=MAX_NORM)
    norms = []
    for images, labels in data:
        part = shard_slice(len(images))
        got = step({x: images[part], y: labels[part]})
        want = reference({ax: images, ay: labels})
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(step.last_grad_norm, reference.last_grad_norm, rtol=1e-5)
        norms.append(reference.last_grad_norm)
    assert max(norms) > MAX_NORM, norms  # the clip acted
    for name, value in alone.state_dict().items():
        np.testing.assert_allclose(net.state_dict()[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    print(f"rank {rank()}: clipped as one process")


if __name__ == "__main__":
    main()
