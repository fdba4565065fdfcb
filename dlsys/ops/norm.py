"""Batch normalisation of NCHW tensors, per channel.

In training, ``batchnorm2d_op`` is one operator, the normalisation with the batch's
statistics and the affine ``x_hat * gamma + beta`` (``batchnorm_affine_op``), whose
gradients are operators of their own that recompute ``x_hat`` from ``x``: so no normalised
copy of ``x`` is kept for the backward pass, and the activation after the batch norm can
join its kernel (it is a fusion anchor). ``batchnorm_normalize_op`` is the normalisation
alone. The running statistics are state updates (``updates_state``): kernels that
blend the batch's statistics into the buffers' own tensors each time the training graph
runs, as PyTorch does. In inference, one kernel applies the running statistics.
"""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_constant, check_flag
from dlsys.errors import ArgumentError, GradientError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.shapes import inputs_text


def _check_nchw(node: Node, shape) -> tuple[int, ...]:
    if len(shape) != 4:
        raise ShapeError(f"{node.name}: batch norm takes NCHW tensors, got shape {tuple(shape)} "
                         f"for {node.inputs[0].name}")
    return tuple(shape)


def _check_channels(node: Node, input_shapes, indices) -> None:
    channels = input_shapes[0][1]
    for i in indices:
        if tuple(input_shapes[i]) != (channels,):
            raise ShapeError(f"{node.name}: {node.inputs[i].name} must have shape ({channels},) "
                             f"for {channels} channels ({inputs_text(node, input_shapes)})")


def _statistics(x: np.ndarray):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    return mean, x.var(axis=(0, 2, 3), keepdims=True)


def _normalize_gradient(g: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    mean, var = _statistics(x)
    inv_std = 1 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    return inv_std * (g - g.mean(axis=(0, 2, 3), keepdims=True)
                      - x_hat * (g * x_hat).mean(axis=(0, 2, 3), keepdims=True))


class BatchNormNormalizeOp(Op):
    """``(x - mean) / sqrt(var + eps)`` with the batch's per-channel statistics. Extra inputs
    (the running statistics' updates) are only ordered before it, never read."""

    name = "BatchNormNormalize"

    def __call__(self, x: Node, *after: Node, eps: float) -> Node:
        return Node(self, [x, *after], {"eps": eps})

    def describe(self, node):
        return f"BatchNormNormalize({short_name(node.inputs[0])})"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def infer_shape(self, node, input_shapes):
        return _check_nchw(node, input_shapes[0])

    def gradient(self, node, output_grad):
        grad = batchnorm_normalize_gradient_op(output_grad, node.inputs[0], node.attrs["eps"])
        return [grad] + [None] * (len(node.inputs) - 1)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("batchnorm_normalize", (tuple(output_shape), node.attrs["eps"]))

    def reference(self, node, x, *after):
        mean, var = _statistics(x)
        return (x - mean) / np.sqrt(var + node.attrs["eps"])


class BatchNormNormalizeGradientOp(Op):
    """The adjoint of the normalisation at ``x`` for the upstream gradient ``g``."""

    name = "BatchNormNormalizeGrad"

    def __call__(self, g: Node, x: Node, eps: float) -> Node:
        return Node(self, [g, x], {"eps": eps})

    def infer_shape(self, node, input_shapes):
        if tuple(input_shapes[0]) != tuple(input_shapes[1]):
            raise ShapeError(f"{node.name}: shapes differ ({inputs_text(node, input_shapes)})")
        return _check_nchw(node, input_shapes[0])

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: batch norm has no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("batchnorm_normalize_gradient", (tuple(output_shape),
                                                           node.attrs["eps"]))

    def reference(self, node, g, x):
        return _normalize_gradient(g, x, node.attrs["eps"])


class BatchNormAffineOp(Op):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` with the batch's per-channel
    statistics, ``gamma`` and ``beta`` of shape (C,). Extra inputs (the running statistics'
    updates) are only ordered before it, never read."""

    name = "BatchNormAffine"
    # The activation after a batch norm (conv-batchnorm-relu) runs in its output loop.
    fusion_anchor = True

    def __call__(self, x: Node, gamma: Node, beta: Node, *after: Node, eps: float) -> Node:
        return Node(self, [x, gamma, beta, *after], {"eps": eps})

    def describe(self, node):
        return f"BatchNormAffine({short_name(node.inputs[0])})"

    def kernel_inputs(self, node):
        return node.inputs[:3]

    def infer_shape(self, node, input_shapes):
        _check_channels(node, input_shapes, (1, 2))
        return _check_nchw(node, input_shapes[0])

    def gradient(self, node, output_grad):
        x, gamma, _ = node.inputs[:3]
        eps = node.attrs["eps"]
        # gamma's gradient is the sum of output_grad * x_hat, computed from x, so that no
        # normalised copy of x has to stay alive from the forward pass to the backward one.
        grads = [batchnorm_affine_gradient_op(output_grad, x, gamma, eps),
                 batchnorm_parameter_gradient_op(output_grad, x, "scale", eps),
                 batchnorm_parameter_gradient_op(output_grad, x, "shift", eps)]
        return grads + [None] * (len(node.inputs) - 3)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("batchnorm_affine", (tuple(output_shape), node.attrs["eps"]))

    def fused_kernel_spec(self, node, shapes, epilogue):
        spec = self.kernel_spec(node, [shapes[i] for i in node.inputs], shapes[node])
        return KernelSpec("batchnorm_affine_epilogue", (*spec.params, tuple(epilogue)))

    def reference(self, node, x, gamma, beta, *after):
        mean, var = _statistics(x)
        channel = (1, -1, 1, 1)
        return ((x - mean) / np.sqrt(var + node.attrs["eps"]) * gamma.reshape(channel)
                + beta.reshape(channel))


class BatchNormAffineGradientOp(Op):
    """The adjoint of ``BatchNormAffine`` in ``x``, for the upstream gradient ``g``: that of
    the normalisation for ``gamma * g``."""

    name = "BatchNormAffineGrad"

    def __call__(self, g: Node, x: Node, gamma: Node, eps: float) -> Node:
        return Node(self, [g, x, gamma], {"eps": eps})

    def infer_shape(self, node, input_shapes):
        if tuple(input_shapes[0]) != tuple(input_shapes[1]):
            raise ShapeError(f"{node.name}: shapes differ ({inputs_text(node, input_shapes)})")
        _check_channels(node, input_shapes, (2,))
        return _check_nchw(node, input_shapes[0])

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: batch norm has no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("batchnorm_affine_gradient", (tuple(output_shape), node.attrs["eps"]))

    def reference(self, node, g, x, gamma):
        return _normalize_gradient(g * gamma.reshape(1, -1, 1, 1), x, node.attrs["eps"])


class BatchNormParameterGradientOp(Op):
    """The gradient of ``BatchNormAffine``'s ``gamma`` (``parameter`` "scale": the sum of
    ``g * x_hat`` per channel) or ``beta`` ("shift": the sum of ``g`` per channel)."""

    name = "BatchNormParameterGrad"

    def __call__(self, g: Node, x: Node, parameter: str, eps: float) -> Node:
        if parameter not in ("scale", "shift"):
            raise ArgumentError(f"{self.name}: parameter must be 'scale' or 'shift', "
                                f"got {parameter!r}")
        return Node(self, [g, x], {"parameter": parameter, "eps": eps})

    def describe(self, node):
        return f"BatchNorm{node.attrs['parameter'].title()}Grad({short_name(node.inputs[0])})"

    def kernel_inputs(self, node):
        return node.inputs if node.attrs["parameter"] == "scale" else node.inputs[:1]

    def infer_shape(self, node, input_shapes):
        if tuple(input_shapes[0]) != tuple(input_shapes[1]):
            raise ShapeError(f"{node.name}: shapes differ ({inputs_text(node, input_shapes)})")
        return (_check_nchw(node, input_shapes[0])[1],)

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: batch norm has no second derivative in dlsys")

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("batchnorm_parameter_gradient",
                          (tuple(input_shapes[0]), node.attrs["parameter"], node.attrs["eps"]))

    def reference(self, node, g, x):
        if node.attrs["parameter"] == "shift":
            return g.sum(axis=(0, 2, 3))
        mean, var = _statistics(x)
        return (g * (x - mean) / np.sqrt(var + node.attrs["eps"])).sum(axis=(0, 2, 3))


class RunningStatisticOp(Op):
    """``(1 - momentum) * running + momentum * batch statistic``, written over the running
    buffer (the statistic: the per-channel mean, or the unbiased variance)."""

    name = "RunningStatistic"
    updates_state = 0

    def __call__(self, running: Node, x: Node, statistic: str, momentum: float) -> Node:
        return Node(self, [running, x], {"statistic": statistic, "momentum": momentum})

    def describe(self, node):
        return f"Running{node.attrs['statistic'].title()}({short_name(node.inputs[0])})"

    def infer_shape(self, node, input_shapes):
        _check_nchw(node, input_shapes[1])
        if tuple(input_shapes[0]) != (input_shapes[1][1],):
            raise ShapeError(f"{node.name}: {node.inputs[0].name} must have shape "
                             f"({input_shapes[1][1]},) ({inputs_text(node, input_shapes)})")
        return tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        return [None, None]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("running_statistic", (tuple(input_shapes[1]), node.attrs["statistic"],
                                                node.attrs["momentum"]))

    def reference(self, node, running, x):
        mean, var = _statistics(x)
        count = x.size // x.shape[1]
        stat = mean if node.attrs["statistic"] == "mean" else var * (count / max(count - 1, 1))
        momentum = node.attrs["momentum"]
        return (1 - momentum) * running + momentum * stat.reshape(-1)


class BatchNormInferenceOp(Op):
    """``gamma * (x - running_mean) / sqrt(running_var + eps) + beta``."""

    name = "BatchNormInference"

    def __call__(self, x, gamma, beta, mean, var, eps: float) -> Node:
        return Node(self, [x, gamma, beta, mean, var], {"eps": eps})

    def infer_shape(self, node, input_shapes):
        _check_nchw(node, input_shapes[0])
        _check_channels(node, input_shapes, range(1, 5))
        return tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: batch norm in eval mode has no gradient in dlsys; "
                            f"build the training graph in training mode")

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("batchnorm_inference", (tuple(output_shape), node.attrs["eps"]))

    def reference(self, node, x, gamma, beta, mean, var):
        channel = (1, -1, 1, 1)
        return ((x - mean.reshape(channel)) / np.sqrt(var.reshape(channel) + node.attrs["eps"])
                * gamma.reshape(channel) + beta.reshape(channel))


batchnorm_normalize_op = BatchNormNormalizeOp()
batchnorm_normalize_gradient_op = BatchNormNormalizeGradientOp()
batchnorm_affine_op = BatchNormAffineOp()
batchnorm_affine_gradient_op = BatchNormAffineGradientOp()
batchnorm_parameter_gradient_op = BatchNormParameterGradientOp()
running_statistic_op = RunningStatisticOp()
batchnorm_inference_op = BatchNormInferenceOp()


def batchnorm2d_op(x: Node, gamma: Node, beta: Node, running_mean: Node, running_var: Node,
                   training: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> Node:
    """Batch normalisation of NCHW ``x`` per channel, as PyTorch's ``batch_norm``.

    In training: the batch's statistics normalise ``x``, and ``running_mean`` and
    ``running_var`` (parameters or buffers: they are updated in place) take
    ``(1 - momentum) * running + momentum * batch`` (the unbiased variance) each run.
    In inference: the running statistics normalise ``x``.
    """
    training = check_flag("training", training)
    momentum = check_constant("batchnorm2d: momentum", momentum)
    eps = check_constant("batchnorm2d: eps", eps)
    if not 0 <= momentum <= 1:
        raise ArgumentError(f"batchnorm2d: momentum must be in [0, 1], got {momentum}")
    if eps <= 0:
        raise ArgumentError(f"batchnorm2d: eps must be positive, got {eps}")
    if not training:
        return batchnorm_inference_op(x, gamma, beta, running_mean, running_var, eps)
    updates = [running_statistic_op(running_mean, x, "mean", momentum),
               running_statistic_op(running_var, x, "var", momentum)]
    return batchnorm_affine_op(x, gamma, beta, *updates, eps=eps)
