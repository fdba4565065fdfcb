"""Layers: ``Linear``, ``Embedding``, the normalisations, and the parameter-free
activations and reshapes.

Shapes, names and default initialisation follow PyTorch (``Linear.weight`` is
``(out_features, in_features)``), so a state dict moves between the two through numpy.
"""

from __future__ import annotations

import numbers

import numpy as np

from dlsys.checks import check_constant, check_flag
from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.graph import Node
from dlsys.kernels.random import SEED_PERIOD
from dlsys.nn import functional as F
from dlsys.nn import init
from dlsys.nn.module import Module
from dlsys.ops import matmul_op, relu_op, sigmoid_op, tanh_op
from dlsys.ops.norm import batchnorm2d_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.random import dropout_op, next_seed_op
from dlsys.ops.reshape import flatten_op


def check_size(layer: str, name: str, value) -> int:
    """A positive int argument of a layer's constructor."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{layer}: {name} must be an int, got {value!r}")
    if value <= 0:
        raise ArgumentError(f"{layer}: {name} must be positive, got {value}")
    return int(value)


class Linear(Module):
    """``y = x @ weight.T + bias`` for ``x`` of shape ``(..., in_features)``: a batch of
    rows, or of sequences (B, T, in_features), the matmul taking a 2-D weight.

    Built as one matmul with the bias added in its epilogue (the fusion pass reads the bias
    vector directly), so a layer is one kernel call.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = check_size("Linear", "in_features", in_features)
        self.out_features = check_size("Linear", "out_features", out_features)
        shape = (self.out_features, self.in_features)
        self.weight = Parameter(init.default_weight(shape, self.in_features), "weight")
        self.bias = (Parameter(init.default_bias((self.out_features,), self.in_features), "bias")
                     if check_flag("bias", bias) else None)

    def forward(self, x: Node) -> Node:
        y = matmul_op(x, self.weight, False, True)
        return y + self.bias if self.bias is not None else y

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}


class ReLU(Module):
    def forward(self, x: Node) -> Node:
        return relu_op(x)


class Sigmoid(Module):
    def forward(self, x: Node) -> Node:
        return sigmoid_op(x)


class Dropout(Module):
    """In training, zero each element with probability ``p`` and scale the rest by
    ``1 / (1 - p)``; in eval mode, the identity. A new mask every run: the layer's ``seed``
    buffer advances in place each time the training graph runs."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_constant("Dropout: p", p)
        if not 0 <= self.p <= 1:
            raise ArgumentError(f"Dropout: p must be in [0, 1], got {p!r}")
        seed = init.generator().integers(0, SEED_PERIOD)
        self.register_buffer("seed", Parameter(np.array([seed], dtype=np.float32), "seed"))

    def forward(self, x: Node) -> Node:
        if not self.training or self.p == 0:
            return x
        return dropout_op(x, next_seed_op(self.seed), self.p)

    def config(self) -> dict:
        return {"p": self.p}


class BatchNorm2d(Module):
    """Batch normalisation of NCHW inputs per channel (``weight`` and ``bias`` learnt, ones
    and zeros at first; ``running_mean`` and ``running_var`` buffers updated in place in
    training, used in eval mode), as PyTorch's. PyTorch's ``num_batches_tracked`` is not
    kept: load a PyTorch state dict with that key dropped, or with ``strict=False``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features = check_size("BatchNorm2d", "num_features", num_features)
        self.eps = check_constant("BatchNorm2d: eps", eps)
        self.momentum = check_constant("BatchNorm2d: momentum", momentum)
        if self.eps <= 0 or not 0 <= self.momentum <= 1:
            raise ArgumentError(f"BatchNorm2d: eps must be positive and momentum in [0, 1], "
                                f"got eps={eps}, momentum={momentum}")
        channels = (self.num_features,)
        self.weight = Parameter(np.ones(channels, np.float32), "weight")
        self.bias = Parameter(np.zeros(channels, np.float32), "bias")
        self.register_buffer("running_mean", Parameter(np.zeros(channels, np.float32),
                                                       "running_mean"))
        self.register_buffer("running_var", Parameter(np.ones(channels, np.float32),
                                                      "running_var"))

    def forward(self, x: Node) -> Node:
        return batchnorm2d_op(x, self.weight, self.bias, self.running_mean, self.running_var,
                              training=self.training, momentum=self.momentum, eps=self.eps)

    def config(self) -> dict:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}


class Tanh(Module):
    def forward(self, x: Node) -> Node:
        return tanh_op(x)


class Flatten(Module):
    """``(N, ...) -> (N, rest)``: no kernel, a view of the same data."""

    def forward(self, x: Node) -> Node:
        return flatten_op(x)


class GELU(Module):
    """``x * Phi(x)``, Phi the standard normal's CDF; ``approximate="tanh"`` uses its tanh
    approximation, as PyTorch's."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = F.check_approximate("GELU", approximate)

    def forward(self, x: Node) -> Node:
        return F.gelu(x, self.approximate)

    def config(self) -> dict:
        return {"approximate": self.approximate}


class Embedding(Module):
    """Row ``i`` of ``weight`` (num_embeddings, embedding_dim) for each id ``i``: ids of
    shape ``S`` (a placeholder fed int32 or int64) give ``S + (embedding_dim,)``. The weight
    starts N(0, 1), as PyTorch's."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = check_size("Embedding", "num_embeddings", num_embeddings)
        self.embedding_dim = check_size("Embedding", "embedding_dim", embedding_dim)
        shape = (self.num_embeddings, self.embedding_dim)
        self.weight = Parameter(init.generator().standard_normal(shape).astype(np.float32),
                                "weight")

    def forward(self, ids: Node) -> Node:
        return F.embedding(ids, self.weight)

    def config(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}


class LayerNorm(Module):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis, ``weight`` ones
    and ``bias`` zeros at first, as PyTorch's. ``normalized_shape`` is the last axis's size,
    an int or a 1-tuple: dlsys normalises over one axis (a longer shape is a ShapeError)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True):
        super().__init__()
        self.normalized_shape = (F.normalized_size("LayerNorm", normalized_shape),)
        self.eps = check_constant("LayerNorm: eps", eps)
        if self.eps <= 0:
            raise ArgumentError(f"LayerNorm: eps must be positive, got {eps}")
        self.elementwise_affine = check_flag("elementwise_affine", elementwise_affine)
        affine_bias = check_flag("bias", bias) and self.elementwise_affine
        self.weight = (Parameter(np.ones(self.normalized_shape, np.float32), "weight")
                       if self.elementwise_affine else None)
        self.bias = (Parameter(np.zeros(self.normalized_shape, np.float32), "bias")
                     if affine_bias else None)

    def forward(self, x: Node) -> Node:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def config(self) -> dict:
        # An int, not the 1-tuple: model files keep plain JSON values.
        return {"normalized_shape": self.normalized_shape[0], "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias is not None}
