"""Converters of ONNX operators outside the other families: cumulative sums, top-k, one-hot,
scatters."""
