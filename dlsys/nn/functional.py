"""Losses and activations as functions of graph nodes."""

from __future__ import annotations

from dlsys.graph import Node
from dlsys.ops import relu_op, sigmoid_op, softmaxcrossentropy_op
from dlsys.ops.loss import onehot_like_op

__all__ = ["cross_entropy", "relu", "sigmoid"]


def cross_entropy(logits: Node, labels: Node) -> Node:
    """Mean softmax cross-entropy of ``logits`` (batch, classes), shape ``(1,)``.

    ``labels`` are class indices, shape ``(batch,)`` (fed as numbers), or one-hot (or any
    probability rows) of the logits' shape; which one is decided by the fed shape.
    """
    return softmaxcrossentropy_op(logits, onehot_like_op(labels, logits))


def relu(x: Node) -> Node:
    return relu_op(x)


def sigmoid(x: Node) -> Node:
    return sigmoid_op(x)
