"""ONNX's reductions and normalisations as dlsys graph nodes (see ``ops``)."""

from __future__ import annotations
