"""The models the front end trains: their layer sizes, initial parameters and graphs.

Both are stacks of dense layers, ReLU between them and softmax cross-entropy on top:

    logreg  784 -> 10
    mlp     784 -> 256 -> 100 -> 10

Initial parameters depend only on the seed and are plain numpy arrays, so the numpy reference
(``dlsys.testing.numpy_reference``) starts from exactly the same point as the dlsys graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlsys.errors import ArgumentError
from dlsys.graph import Node
from dlsys.ops import Variable, broadcastto_op, matmul_op, relu_op, softmaxcrossentropy_op

MODEL_LAYERS: dict[str, tuple[int, ...]] = {
    "logreg": (784, 10),
    "mlp": (784, 256, 100, 10),
}
DEFAULT_MODEL = "mlp"


@dataclass(frozen=True)
class DenseLayer:
    """``h @ weight + bias``, followed by a ReLU unless it is the output layer."""

    weight: str
    bias: str
    fan_in: int
    fan_out: int
    relu: bool


def layer_sizes(model: str) -> tuple[int, ...]:
    """The widths of the model's layers, input first."""
    try:
        return MODEL_LAYERS[model]
    except KeyError:
        raise ArgumentError(f"unknown model {model!r}; choose one of "
                            f"{', '.join(MODEL_LAYERS)}") from None


def dense_layers(model: str) -> list[DenseLayer]:
    """The model's layers in order; parameters are named ``W1``, ``b1``, ``W2``, ..."""
    sizes = layer_sizes(model)
    last = len(sizes) - 1
    return [DenseLayer(f"W{i}", f"b{i}", fan_in, fan_out, relu=i < last)
            for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1)]


def num_classes(model: str) -> int:
    """The width of the output layer."""
    return dense_layers(model)[-1].fan_out


def param_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Parameter names (``W1``, ``b1``, ``W2``, ...) and shapes, in layer order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in dense_layers(model):
        shapes[layer.weight] = (layer.fan_in, layer.fan_out)
        shapes[layer.bias] = (layer.fan_out,)
    return shapes


def seed_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators from one seed: one for initialisation, one for shuffling.

    Separate streams keep the data order unchanged when the initialisation changes, and let a
    checkpoint save the shuffling state alone.
    """
    init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(shuffle_seq)


def init_params(model: str, seed: int) -> dict[str, np.ndarray]:
    """Float32 initial parameters: He-uniform before a ReLU, Glorot-uniform for the output
    layer (whose softmax is closer to linear), zero biases."""
    rng, _ = seed_streams(seed)
    params: dict[str, np.ndarray] = {}
    for layer in dense_layers(model):
        fan_in, fan_out = layer.fan_in, layer.fan_out
        bound = np.sqrt(6.0 / fan_in) if layer.relu else np.sqrt(6.0 / (fan_in + fan_out))
        params[layer.weight] = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(
            np.float32)
        params[layer.bias] = np.zeros(fan_out, dtype=np.float32)
    return params


@dataclass(frozen=True)
class ModelGraph:
    """The graph of one model: its placeholders, the logits and the mean loss."""

    name: str
    x: Node
    y_: Node
    params: dict[str, Node]
    logits: Node
    loss: Node


def build_model(model: str) -> ModelGraph:
    """The dlsys graph of ``model``: dense layers ``h @ W + b``, ReLU between them."""
    x, y_ = Variable("x"), Variable("y_")
    params = {name: Variable(name) for name in param_shapes(model)}
    h = x
    for layer in dense_layers(model):
        z = matmul_op(h, params[layer.weight])
        z = z + broadcastto_op(params[layer.bias], z)
        h = relu_op(z) if layer.relu else z
    return ModelGraph(model, x, y_, params, logits=h, loss=softmaxcrossentropy_op(h, y_))
