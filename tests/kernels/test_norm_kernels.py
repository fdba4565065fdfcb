"""The batch-normalisation kernels (``compute_norm``) under their schedule family
``channel_norm`` (``dlsys.kernels.norm``): parallel and vectorised, skipped by
``DLSYS_SCHEDULE=naive``, and equal to the definitions in numpy for shapes that exercise each
of the schedule's cases (one channel per group or several, planes of one position, planes
vectorised whole or split, a batch of one)."""

import re

import numpy as np
import pytest
import tvm

from dlsys.kernels import build, registry
from dlsys.kernels.norm import compute as compute_norm

TARGET = build.make_target("llvm")
EPS, MOMENTUM = 1e-5, 0.1
KINDS = {
    "batchnorm_normalize": (EPS,),
    "batchnorm_normalize_gradient": (EPS,),
    "running_statistic": ("var", MOMENTUM),
    "batchnorm_inference": (EPS,),
    "batchnorm_affine": (EPS,),
    "batchnorm_affine_gradient": (EPS,),
    "batchnorm_parameter_gradient": ("scale", EPS),
    "channel_sum": (),
}
# (1, 6, 28, 28): one image whose plane is vectorised in pieces (LeNet at batch 1).
SHAPES = [(4, 32, 28, 28), (8, 16, 14, 14), (3, 5, 9, 9), (1, 2, 2, 3), (2, 3, 1, 1),
          (1, 6, 28, 28)]


def _statistics(x):
    return x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)


def _x_hat(x, eps=EPS):
    mean, var = _statistics(x)
    return (x - mean) / np.sqrt(var + eps)


def _reference(kind: str, shape, inputs, eps=EPS, momentum=MOMENTUM, statistic="var"):
    channel = (1, -1, 1, 1)
    if kind == "batchnorm_normalize":
        return _x_hat(inputs[0], eps)
    if kind == "batchnorm_affine":
        x, gamma, beta = inputs
        return _x_hat(x, eps) * gamma.reshape(channel) + beta.reshape(channel)
    if kind in ("batchnorm_normalize_gradient", "batchnorm_affine_gradient"):
        g, x = inputs[:2]
        if kind == "batchnorm_affine_gradient":
            g = g * inputs[2].reshape(channel)
        x_hat = _x_hat(x, eps)
        return (g - g.mean(axis=(0, 2, 3), keepdims=True)
                - x_hat * (g * x_hat).mean(axis=(0, 2, 3), keepdims=True)) \
            / np.sqrt(_statistics(x)[1] + eps)
    if kind == "batchnorm_parameter_gradient":
        g, x = inputs
        return (g * _x_hat(x, eps)).sum(axis=(0, 2, 3))
    if kind == "channel_sum":
        return inputs[0].sum(axis=(0, 2, 3)).reshape(-1, 1, 1)
    if kind == "running_statistic":
        running, x = inputs
        count = x.size // shape[1]
        unbiased = x.var(axis=(0, 2, 3)) * count / max(count - 1, 1)
        stat = x.mean(axis=(0, 2, 3)) if statistic == "mean" else unbiased
        return (1 - momentum) * running + momentum * stat
    x, gamma, beta, mean, var = inputs
    return ((x - mean.reshape(channel)) / np.sqrt(var.reshape(channel) + eps)
            * gamma.reshape(channel) + beta.reshape(channel))


def _params(kind: str, shape) -> tuple:
    # The per-channel sum takes its output shape, (C, 1, 1) as a convolution's bias has.
    return ((shape[1], 1, 1),) if kind == "channel_sum" else KINDS[kind]


def _definition(kind: str, shape):
    return getattr(compute_norm, kind)(shape, *_params(kind, shape), "float32")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_channel_norm_parallelises_and_vectorises_and_naive_skips_it(monkeypatch, kind):
    family = registry.kind(kind).schedule
    assert family == "channel_norm"
    tuned = build.scheduled_module(*_definition(kind, SHAPES[0]), family, TARGET, "k").script()
    assert re.search(r"T\.parallel\(", tuned) and re.search(r"T\.vectorized\(", tuned), tuned
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    naive = build.scheduled_module(*_definition(kind, SHAPES[0]), family, TARGET, "k").script()
    assert not re.search(r"T\.(parallel|vectorized)\(", naive), naive


def _check_against_numpy(kind: str, shape, params: tuple, **constants) -> None:
    """Build ``kind`` for ``shape`` and ``params``, run it on positive inputs and compare
    with ``_reference`` (given the kernel's ``constants`` where they are not the defaults)."""
    kernel = registry.KernelSpec(kind, (shape, *params)).build("llvm", "float32")
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0.5, 1.5, s) * (1 + i) for i, s in enumerate(kernel.arg_shapes[:-1])]
    out = tvm.runtime.tensor(np.zeros(kernel.arg_shapes[-1], np.float32))
    kernel(*[tvm.runtime.tensor(a.astype(np.float32)) for a in inputs], out)
    # A parameter's gradient is a sum over N * H * W values, not a mean: the same tolerance
    # per value as the means.
    sums = ("batchnorm_parameter_gradient", "channel_sum")
    count = shape[0] * shape[2] * shape[3] if kind in sums else 1
    np.testing.assert_allclose(out.numpy() / count,
                               _reference(kind, shape, inputs, **constants) / count,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_channel_norm_kernels_match_numpy(kind, shape):
    _check_against_numpy(kind, shape, _params(kind, shape))


# The edges of what BatchNorm2d, batchnorm2d_op and the ONNX importer accept: eps in
# (0, float32's largest], momentum in [0, 1]. A coefficient of 0 or 1 lets TE simplify a
# term away (momentum 0 drops the batch statistic from the running update), which once left
# the schedule without the block it read the plane from.
BOUNDARY_EPS = [1e-45, 1e-5, 1.0, 3e38]
BOUNDARY_MOMENTUM = [0.0, 2.0**-24, 0.5, 1.0 - 2.0**-24, 1.0]
BOUNDARY_CASES = (
    [(kind, tuple(eps if p == EPS else p for p in KINDS[kind]), {"eps": eps})
     for kind in sorted(KINDS) if EPS in KINDS[kind] for eps in BOUNDARY_EPS]
    + [("running_statistic", (statistic, momentum),
        {"momentum": momentum, "statistic": statistic})
       for statistic in ("mean", "var") for momentum in BOUNDARY_MOMENTUM])


@pytest.mark.parametrize("kind, params, constants", BOUNDARY_CASES)
def test_channel_norm_kernels_build_at_every_accepted_constant(kind, params, constants):
    _check_against_numpy(kind, SHAPES[1], params, **constants)
