"""Losses and activations as functions of graph nodes."""

from __future__ import annotations

from dlsys.graph import Node
from dlsys.ops import mean_op, relu_op, sigmoid_op, softmaxcrossentropy_op, tanh_op
from dlsys.ops.loss import onehot_like_op

__all__ = ["cross_entropy", "mse_loss", "relu", "sigmoid", "tanh"]


def cross_entropy(logits: Node, labels: Node) -> Node:
    """Mean softmax cross-entropy of ``logits`` (batch, classes), shape ``(1,)``.

    ``labels`` are class indices, shape ``(batch,)`` (fed as numbers), or one-hot (or any
    probability rows) of the logits' shape; which one is decided by the fed shape. A class
    labelled 0 adds nothing, even where its logit is ``-inf`` (a masked class): the loss and
    its gradient are finite while every target's logit is, with indices as with one-hot rows
    (where PyTorch gives NaN).
    """
    return softmaxcrossentropy_op(logits, onehot_like_op(labels, logits))


def mse_loss(prediction: Node, target: Node) -> Node:
    """Mean over every element of ``(prediction - target) ** 2``, shape ``(1,)``."""
    error = prediction - target
    return mean_op(error * error)


def relu(x: Node) -> Node:
    return relu_op(x)


def sigmoid(x: Node) -> Node:
    return sigmoid_op(x)


def tanh(x: Node) -> Node:
    return tanh_op(x)
