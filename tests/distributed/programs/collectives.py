"""Run under ``mpirun -n 2``: dlsys.distributed's collectives and DistributedStep, checked on
every rank; prints ``rank R: ok`` when every check passed (a failed check aborts the job)."""

import numpy as np
import tvm

from dlsys import autodiff as ad
from dlsys import distributed as dist
from dlsys import optim
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.ops.placeholder import Parameter

rank, size = dist.rank(), dist.world_size()
assert size == 2, size

# allreduce_ sums in place: the same memory afterwards, every rank holding the sum.
for dtype in ("float32", "float64"):
    tensor = tvm.runtime.tensor(np.arange(10, dtype=dtype) * (rank + 1))
    address = tensor.data_ptr()
    dist.allreduce_(tensor)
    assert tensor.data_ptr() == address
    np.testing.assert_array_equal(tensor.numpy(), np.arange(10) * 3)

# A view reduces its own part of the buffer, nothing around it.
base = tvm.runtime.tensor(np.full(8, rank + 1, dtype="float32"))
dist.allreduce_(base._create_view((4,), relative_byte_offset=16))
np.testing.assert_array_equal(base.numpy(), [rank + 1] * 4 + [3] * 4)

# broadcast_ from either root.
for root in (0, 1):
    tensor = tvm.runtime.tensor(np.full((2, 3), rank, dtype="float32"))
    dist.broadcast_(tensor, root=root)
    np.testing.assert_array_equal(tensor.numpy(), np.full((2, 3), root))

# Bad arguments are refused before any collective starts, alike on every rank.
for call, error in [(lambda: dist.allreduce_(np.zeros(3)), ArgumentTypeError),
                    (lambda: dist.broadcast_(tvm.runtime.tensor(np.zeros(3)), root=2),
                     ArgumentError)]:
    try:
        call()
    except error:
        pass
    else:
        raise AssertionError(f"{call} was not refused")
assert dist.shard_slice(10) == slice(5 * rank, 5 * rank + 5)
try:
    dist.shard_slice(7)
except dist.DistributedError as e:
    assert e.every_rank and "7" in str(e), e
else:
    raise AssertionError("a batch of 7 was split among 2 ranks")


def model(seed: int):
    rng = np.random.default_rng(seed)
    w = Parameter(rng.standard_normal((6, 4)).astype(np.float32) * 0.3, name="W")
    b = Parameter(np.zeros(4, np.float32), name="b")
    x, y = ad.Variable("x"), ad.Variable("y")
    logits = ad.add_op(ad.matmul_op(x, w), ad.broadcastto_op(b, ad.matmul_op(x, w)))
    return ad.softmaxcrossentropy_op(logits, y), x, y, [w, b]


# DistributedStep on each rank's half equals a plain step on the whole batch. The ranks start
# from different values: the broadcast from rank 0 must make them equal.
loss, x, y, params = model(seed=rank)
step = dist.DistributedStep(optim.SGD(params, 0.5, momentum=0.9), loss)
ref_loss, ref_x, ref_y, ref_params = model(seed=0)
ref_step = optim.SGD(ref_params, 0.5, momentum=0.9).minimize(ref_loss)
rng = np.random.default_rng(7)
for _ in range(5):
    images = rng.standard_normal((16, 6)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 16)]
    part = dist.shard_slice(16)
    got = step({x: images[part], y: labels[part]})
    want = ref_step({ref_x: images, ref_y: labels})
    assert abs(got - want) <= 1e-5 * abs(want), (got, want)
for mine, ref in zip(params, ref_params):
    np.testing.assert_allclose(mine.data.numpy(), ref.data.numpy(), rtol=1e-5, atol=1e-6)
print(f"rank {rank}: ok", flush=True)
