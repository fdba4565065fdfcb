"""ONNX's Einsum as dlsys graph nodes: the contractions attention and dense layers write,
as transposes, reshapes and (batched) matrix products (see ``ops``)."""

from __future__ import annotations
