"""ONNX's image resampling (Resize, Upsample) as dlsys graph nodes (see ``ops``)."""

from __future__ import annotations
