"""The models the front end trains: their layer sizes, initial parameters and graphs.

Both are stacks of dense layers, ReLU between them and softmax cross-entropy on top:

    logreg  784 -> 10
    mlp     784 -> 256 -> 100 -> 10

Initial parameters depend only on the seed and are plain numpy arrays, so the numpy reference
(``dlsys.testing.numpy_reference``) starts from exactly the same point as the dlsys graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dlsys.graph import Node

MODEL_LAYERS: dict[str, tuple[int, ...]] = {
    "logreg": (784, 10),
    "mlp": (784, 256, 100, 10),
}
DEFAULT_MODEL = "mlp"


def layer_sizes(model: str) -> tuple[int, ...]:
    """The widths of the model's layers, input first."""
    try:
        return MODEL_LAYERS[model]
    except KeyError:
        raise ValueError(f"unknown model {model!r}; choose one of "
                         f"{', '.join(MODEL_LAYERS)}") from None


def param_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Parameter names (``W1``, ``b1``, ``W2``, ...) and shapes, in layer order."""
    sizes = layer_sizes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        shapes[f"W{i}"] = (fan_in, fan_out)
        shapes[f"b{i}"] = (fan_out,)
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
    shapes = param_shapes(model)
    last = len(layer_sizes(model)) - 1
    params: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.startswith("b"):
            params[name] = np.zeros(shape, dtype=np.float32)
            continue
        fan_in, fan_out = shape
        if int(name[1:]) < last:
            bound = np.sqrt(6.0 / fan_in)
        else:
            bound = np.sqrt(6.0 / (fan_in + fan_out))
        params[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
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
    # Imported here so that the numpy reference can share the specs above without loading
    # the graph layer and TVM.
    from dlsys import autodiff as ad

    sizes = layer_sizes(model)
    x, y_ = ad.Variable("x"), ad.Variable("y_")
    params = {name: ad.Variable(name) for name in param_shapes(model)}
    h = x
    for i in range(1, len(sizes)):
        z = ad.matmul_op(h, params[f"W{i}"])
        z = z + ad.broadcastto_op(params[f"b{i}"], z)
        h = ad.relu_op(z) if i < len(sizes) - 1 else z
    return ModelGraph(model, x, y_, params, logits=h, loss=ad.softmaxcrossentropy_op(h, y_))
