"""ONNX's losses (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss) as dlsys graph nodes
(see ``ops``)."""

from __future__ import annotations
