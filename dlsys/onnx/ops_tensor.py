"""ONNX's tensor and shape manipulation as dlsys graph nodes, and the shape computations
that fold into constants once the input shapes are known (see ``ops``)."""

from __future__ import annotations
