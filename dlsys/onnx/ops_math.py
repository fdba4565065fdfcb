"""ONNX's elementwise arithmetic and activations as dlsys graph nodes (see ``ops``)."""

from __future__ import annotations
