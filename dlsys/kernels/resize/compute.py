"""The resize family's compute: an image resampled along its trailing axes (nearest or
linear, ONNX's Resize), and the adjoint, which gathers for each input element the output
gradients that read it.

Each resized axis maps an output index ``i`` to a coordinate ``x(i)`` of the input, in
float64 and in the order of operations ONNX's reference uses (``(i + 0.5) / scale - 0.5``
for half_pixel), so that the ties of the nearest modes fall where the reference's do. An
axis whose scale is 1 and whose size is kept is read as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape

# One resized axis: (input size, output size, scale).
Axis = tuple[int, int, float]


def _f64(value: float) -> tirx.PrimExpr:
    return tirx.const(float(value), "float64")


def _identity(axis: Axis) -> bool:
    size, out, scale = axis
    return scale == 1.0 and out == size


def coordinate(i, axis: Axis, mode: str) -> tirx.PrimExpr:
    """The input coordinate (float64) that output index ``i`` of ``axis`` samples."""
    size, out, scale = axis
    x = i.astype("float64")
    if mode == "asymmetric":
        return x / _f64(scale)
    if mode == "tf_half_pixel_for_nn":
        return (x + _f64(0.5)) / _f64(scale)
    if mode == "align_corners":
        out_float = scale * size  # the reference's length, before it is rounded down
        if out_float == 1.0:
            return _f64(0.0)
        return x * _f64(size - 1) / _f64(out_float - 1)
    if mode == "pytorch_half_pixel" and out == 1:
        return _f64(0.0)
    centred = (x + _f64(0.5)) / _f64(scale) - _f64(0.5)
    if mode == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / (scale * size))
        return _f64(offset) + centred
    return centred  # half_pixel, pytorch_half_pixel


def _clamp(index, size: int):
    return tirx.min(tirx.max(index, 0), size - 1)


def nearest_index(i, axis: Axis, mode: str, nearest: str) -> tirx.PrimExpr:
    """The input index output index ``i`` copies: the coordinate rounded as ``nearest``
    says, clamped to the axis."""
    x = coordinate(i, axis, mode)
    if nearest == "round_prefer_floor":
        rounded = tirx.ceil(x - _f64(0.5))
    elif nearest == "round_prefer_ceil":
        rounded = tirx.floor(x + _f64(0.5))
    elif nearest == "floor":
        rounded = tirx.floor(x)
    else:
        rounded = tirx.ceil(x)
    return _clamp(rounded.astype("int32"), axis[0])


def linear_taps(i, axis: Axis, mode: str) -> tuple:
    """``(first, second, weight)``: output index ``i`` of ``axis`` is ``(1 - weight)`` of
    input ``first`` plus ``weight`` of input ``second`` (both clamped to the axis, as
    ONNX's edge padding reads them)."""
    x = coordinate(i, axis, mode)
    below = tirx.floor(x)
    start = below.astype("int32")
    return _clamp(start, axis[0]), _clamp(start + 1, axis[0]), x - below


def _axes(shape: Shape, sizes: Sequence[int], scales: Sequence[float]) -> list[Axis]:
    lead = len(shape) - len(sizes)
    return [(shape[lead + d], sizes[d], scales[d]) for d in range(len(sizes))]


def resize(shape: Shape, sizes: Sequence[int], scales: Sequence[float], mode: str,
           coordinate_mode: str, nearest: str, dtype: str):
    """``Y``: ``X`` of ``shape`` resampled to ``sizes`` along its trailing axes (``mode``
    "nearest" or "linear"; ``coordinate_mode`` and ``nearest`` as ONNX's Resize names
    them)."""
    x = te.placeholder(shape, dtype=dtype, name="X")
    axes = _axes(shape, sizes, scales)
    lead = len(shape) - len(axes)
    out_shape = (*shape[:lead], *sizes)

    def nearest_body(*index):
        source = list(index[:lead])
        for i, axis in zip(index[lead:], axes):
            source.append(i if _identity(axis) else
                          nearest_index(i, axis, coordinate_mode, nearest))
        return x[tuple(source)]

    def linear_body(*index):
        # Every corner of the cell around the coordinate: 2**k terms for k resized axes.
        corners = [(list(index[:lead]), _f64(1.0))]
        for i, axis in zip(index[lead:], axes):
            if _identity(axis):
                corners = [(at + [i], w) for at, w in corners]
                continue
            first, second, weight = linear_taps(i, axis, coordinate_mode)
            corners = [(at + [j], w * v) for at, w in corners
                       for j, v in ((first, _f64(1.0) - weight), (second, weight))]
        total = None
        for at, w in corners:
            term = x[tuple(at)] * w.astype(dtype)
            total = term if total is None else total + term
        return total

    body = nearest_body if mode == "nearest" else linear_body
    return [x], [te.compute(out_shape, body, name="resize")]


def _window(axis: Axis, mode: str) -> tuple[float, float, int]:
    """``(alpha, beta, length)``: output index ``i`` of ``axis`` samples near ``alpha * i +
    beta``, and the output indices that read input ``j`` all lie in a run of ``length``
    (those whose coordinate is within 1 of ``j``, and a margin for rounding)."""
    size, out, scale = axis
    if mode == "align_corners":
        out_float = scale * size
        alpha = 0.0 if out_float == 1.0 else (size - 1) / (out_float - 1)
        beta = 0.0
    elif mode == "asymmetric":
        alpha, beta = 1 / scale, 0.0
    elif mode == "tf_half_pixel_for_nn":
        alpha, beta = 1 / scale, 0.5 / scale
    elif mode == "pytorch_half_pixel" and out == 1:
        alpha, beta = 0.0, 0.0
    else:
        alpha, beta = 1 / scale, 0.5 / scale - 0.5
        if mode == "half_pixel_symmetric":
            beta += size / 2 * (1 - out / (scale * size))
    if alpha <= 0.0:
        return alpha, beta, out
    return alpha, beta, min(out, math.floor(2 / alpha) + 5)


def _window_start(j, axis: Axis, alpha: float, beta: float, length: int):
    """The first output index of input ``j``'s run (see ``_window``)."""
    out = axis[1]
    if length >= out:
        return tirx.const(0, "int32")
    first = tirx.floor((j.astype("float64") - _f64(1.0 + beta)) / _f64(alpha))
    return tirx.min(tirx.max(first.astype("int32") - 1, 0), out - length)


def resize_gradient(shape: Shape, sizes: Sequence[int], scales: Sequence[float], mode: str,
                    coordinate_mode: str, nearest: str, dtype: str):
    """``dX`` of ``resize`` (``shape`` is ``X``'s): each input element sums the output
    gradients ``G`` that read it, each times the weight it was read with. Written as a
    gather over the run of outputs near it (``_window``), the forward's own index
    arithmetic deciding which of them read it, so the sum is deterministic and every
    element is written once."""
    axes = _axes(shape, sizes, scales)
    lead = len(shape) - len(axes)
    g = te.placeholder((*shape[:lead], *sizes), dtype=dtype, name="G")
    windows = [None if _identity(axis) else _window(axis, coordinate_mode) for axis in axes]
    reduce_axes = [te.reduce_axis((0, w[2]), name=f"r{d}")
                   for d, w in enumerate(windows) if w is not None]

    def weight(i, j, axis: Axis):
        if mode == "nearest":
            hit = nearest_index(i, axis, coordinate_mode, nearest) == j
            return tirx.Select(hit, _f64(1.0), _f64(0.0))
        first, second, w = linear_taps(i, axis, coordinate_mode)
        return (tirx.Select(first == j, _f64(1.0) - w, _f64(0.0))
                + tirx.Select(second == j, w, _f64(0.0)))

    def body(*index):
        at = list(index[:lead])
        total = _f64(1.0)
        reducers = iter(reduce_axes)
        for j, axis, window in zip(index[lead:], axes, windows):
            if window is None:
                at.append(j)
                continue
            alpha, beta, length = window
            i = _window_start(j, axis, alpha, beta, length) + next(reducers)
            at.append(i)
            total = total * weight(i, j, axis)
        term = g[tuple(at)] * total.astype(dtype)
        return te.sum(term, axis=reduce_axes) if reduce_axes else term

    return [g], [te.compute(tuple(shape), body, name="resize_gradient")]
