"""The executor on a CUDA device: the MLP training step matches the CPU, and SGD updates in
place on the GPU. Skipped where TVM sees no GPU (CI has none; run it on a GPU machine)."""

import numpy as np
import pytest
import tvm

from dlsys import autodiff as ad
from dlsys.frontend.models import build_model
from dlsys.nn import functional as F
from dlsys.optim import SGD

pytestmark = pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA device")


def training_step_values(ctx, batch=37, seed=0):
    model = build_model("mlp", seed)
    x, labels = ad.Variable("x"), ad.Variable("labels")
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    params = model.parameters()
    executor = ad.Executor([loss, *ad.gradients(loss, params), logits], ctx=ctx)
    rng = np.random.default_rng(seed)
    # Parameters fed as tensors on the device (they hold theirs on the CPU).
    on_device = {p: tvm.runtime.tensor(p.numpy(), ctx) for p in params}
    feeds = {x: rng.random((batch, 784), dtype=np.float32),
             labels: np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)], **on_device}
    return executor, feeds, list(on_device.values()), executor.run(
        feeds, convert_to_numpy_ret_vals=True)


def test_mlp_training_step_on_gpu_matches_cpu():
    *_, on_gpu = training_step_values(tvm.cuda(0))
    *_, on_cpu = training_step_values(tvm.cpu(0))
    for gpu_value, cpu_value in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(gpu_value, cpu_value, rtol=1e-4, atol=1e-6)


def test_sgd_steps_on_gpu_lower_the_loss():
    executor, feeds, params, first = training_step_values(tvm.cuda(0))
    optimizer = SGD(params, 0.2, target="cuda")
    losses = [float(first[0][0])]
    for _ in range(5):
        loss, *grads = executor.run(feeds)[:-1]
        optimizer.step(grads)
        losses.append(float(loss.numpy()[0]))
    assert losses[-1] < losses[0]
    assert all(p.device.dlpack_device_type() == tvm.cuda(0).dlpack_device_type() for p in params)
