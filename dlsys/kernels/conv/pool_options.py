"""Compute definitions of the pools with ONNX's options (``dlsys.ops.pool``): averages over
the positions each window counts (``count_include_pad=0``, ceil mode's last windows),
dilated averages, and the adjoints of dilated max and average pools. The plain pools and the
shared padding and window helpers are in ``compute``; the conventions are the same.

A dilated window's adjoint cannot use ``compute._covering`` (the windows covering an element
are no longer consecutive): it asks each kernel tap instead which window, if any, holds the
element at that tap (``_tap_window``), one term per tap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.conv.compute import (
    _argmax,
    _covering,
    _covering_axes,
    _pad_to,
    _window_axes,
    _windows_padded,
    embed,
)

Pair = tuple[int, int]


def _inverse_count(window_y, window_x, kernel: Pair, stride: Pair, padding: Pair,
                   counted: tuple[Pair, Pair], dtype: str, dilation: Pair = (1, 1)):
    """1 / the number of positions of window ``(window_y, window_x)`` inside the ``counted``
    span ``[lo, hi)`` of each axis (at least 1); a dilated window's taps are ``start + r *
    dilation``, the first and last inside found by dividing."""
    count = tirx.const(1, "int32")
    for window, k, s, p, d, (lo, hi) in zip((window_y, window_x), kernel, stride, padding,
                                             dilation, counted):
        start = window * s - p
        if d == 1:
            inside = tirx.min(start + k, hi) - tirx.max(start, lo)
        else:
            first = tirx.max(0, -((start - lo) // d))  # ceil((lo - start) / d)
            last = tirx.min(k - 1, (hi - 1 - start) // d)
            inside = last - first + 1
        count = count * tirx.max(inside, 1)
    return tirx.const(1.0, dtype) / count.astype(dtype)


def dilated_avg_pool2d(shape_x: Shape, shape_y: Shape, kernel: Pair, stride: Pair,
                       padding: Pair, dilation: Pair, counted: tuple[Pair, Pair],
                       dtype: str) -> tuple[TensorList, TensorList]:
    """``avg_pool2d_counted`` over windows taking every ``dilation``-th element."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    xp = _pad_to(x, padding, shape_y[2:], kernel, stride, 0.0, dilation)
    ry, rx = _window_axes(kernel)
    (sh, sw), (dh, dw) = stride, dilation

    def body(b, c, i, j):
        scale = _inverse_count(i, j, kernel, stride, padding, counted, dtype, dilation)
        return te.sum(xp[b, c, i * sh + ry * dh, j * sw + rx * dw] * scale, axis=[ry, rx])

    return [x], [te.compute(shape_y, body, name="avg_pool2d")]


def dilated_avg_pool2d_grad(shape_g: Shape, shape_x: Shape, kernel: Pair, stride: Pair,
                            padding: Pair, dilation: Pair, counted: tuple[Pair, Pair],
                            dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` of ``dilated_avg_pool2d``: per kernel tap, the one window (if any) in which an
    element is that tap (``_tap_window``) gives its gradient over the window's count."""
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    shift, size = _tap_shift(shape_x[2:], kernel, stride, padding, dilation)
    gp = embed(g, shift, size, 0.0, "pad_g")
    zero = tirx.const(0, dtype)

    def body(b, c, h, w):
        total = zero
        for ky in range(kernel[0]):
            i, valid_y = _tap_window(h, padding[0], ky, dilation[0], stride[0], shape_g[2])
            for kx in range(kernel[1]):
                j, valid_x = _tap_window(w, padding[1], kx, dilation[1], stride[1], shape_g[3])
                scale = _inverse_count(i, j, kernel, stride, padding, counted, dtype, dilation)
                total = total + tirx.Select(tirx.all(valid_y, valid_x),
                                            gp[b, c, i + shift[0], j + shift[1]] * scale, zero)
        return total

    return [g], [te.compute(shape_x, body, name="avg_pool2d_grad")]


def _tap_shift(image: Sequence[int], kernel: Pair, stride: Pair, padding: Pair,
               dilation: Pair) -> tuple[Pair, Pair]:
    """``(shift, size)`` of a per-window tensor's padded copy in which every window index a
    tap gives (``_tap_window``) is in range once shifted."""
    shift = tuple(-(-((k - 1) * d) // s) for k, d, s in zip(kernel, dilation, stride))
    size = tuple((n - 1 + p) // s + 1 + t for n, p, s, t in zip(image, padding, stride, shift))
    return shift, size


def _tap_window(position, pad: int, tap: int, dilation: int, stride: int, windows: int):
    """``(window, valid)``: the window in which ``position`` is kernel tap ``tap``, and
    whether there is one."""
    start = position + pad - tap * dilation
    return start // stride, tirx.all(start >= 0, start % stride == 0, start // stride < windows)


def avg_pool2d_counted(shape_x: Shape, shape_y: Shape, kernel: Pair, stride: Pair,
                       padding: Pair, counted: tuple[Pair, Pair],
                       dtype: str) -> tuple[TensorList, TensorList]:
    """The mean of each window over its positions inside ``counted`` (ONNX's
    ``count_include_pad=0``, and ceil mode's last windows); padding adds zeros."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    xp = _pad_to(x, padding, shape_y[2:], kernel, stride, 0.0)
    ry, rx = _window_axes(kernel)
    sh, sw = stride

    def body(b, c, i, j):
        scale = _inverse_count(i, j, kernel, stride, padding, counted, dtype)
        return te.sum(xp[b, c, i * sh + ry, j * sw + rx] * scale, axis=[ry, rx])

    return [x], [te.compute(shape_y, body, name="avg_pool2d")]


def avg_pool2d_grad_counted(shape_g: Shape, shape_x: Shape, kernel: Pair, stride: Pair,
                            padding: Pair, counted: tuple[Pair, Pair],
                            dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` of ``avg_pool2d_counted``: each element gets its covering windows' gradients,
    each over its window's count."""
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    gp = _windows_padded(g, shape_x[2:], kernel, stride, padding, 0.0, "pad")
    wy, wx = _covering_axes(kernel, stride)
    shift = [-(-k // s) - 1 for k, s in zip(kernel, stride)]
    zero = tirx.const(0, dtype)

    def body(b, c, h, w):
        i, _, valid_y = _covering(h, padding[0], kernel[0], stride[0], shape_g[2], wy)
        j, _, valid_x = _covering(w, padding[1], kernel[1], stride[1], shape_g[3], wx)
        scale = _inverse_count(i - shift[0], j - shift[1], kernel, stride, padding, counted,
                               dtype)
        return te.sum(tirx.Select(tirx.all(valid_y, valid_x), gp[b, c, i, j] * scale, zero),
                      axis=[wy, wx])

    return [g], [te.compute(shape_x, body, name="avg_pool2d_grad")]


def dilated_max_pool2d_grad(shape_x: Shape, shape_g: Shape, shape_dx: Shape, kernel: Pair,
                            stride: Pair, padding: Pair, dilation: Pair,
                            dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` of ``dilated_max_pool2d``: ``dilated_max_pool2d_grad_epilogue``, no epilogue."""
    return dilated_max_pool2d_grad_epilogue(shape_x, shape_g, shape_dx, kernel, stride, padding,
                                            dilation, (), dtype)


def dilated_max_pool2d_grad_epilogue(shape_x: Shape, shape_g: Shape, shape_dx: Shape,
                                     kernel: Pair, stride: Pair, padding: Pair, dilation: Pair,
                                     epilogue: Sequence[tuple[Epilogue, Callable]],
                                     dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(dX)`` of ``dilated_max_pool2d``: each tap ``(ky, kx)`` of the kernel names
    the one window (if any) in which an element is that tap, ``(p - k * dilation) /
    stride`` along each axis; the element gets that window's gradient when it is the
    window's first maximum."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    xp = _pad_to(x, padding, shape_g[2:], kernel, stride, float("-inf"), dilation)
    ry, rx = _window_axes(kernel)
    (sh, sw), (dh, dw), (kh, kw) = stride, dilation, kernel
    where, _ = te.compute(
        shape_g, lambda b, c, i, j: _argmax(((ry * kw + rx).astype("int32"),
                                             xp[b, c, i * sh + ry * dh, j * sw + rx * dw]),
                                            axis=[ry, rx]), name="argmax")
    # Copies shifted so that every window index a tap gives is in range.
    shift, size = _tap_shift(shape_dx[2:], kernel, stride, padding, dilation)
    wherep = embed(where, shift, size, -1, "pad_argmax")
    gp = embed(g, shift, size, 0.0, "pad_g")
    zero = tirx.const(0, dtype)

    def body(b, c, h, w):
        total = zero
        for ky in range(kh):
            i, valid_y = _tap_window(h, padding[0], ky, dh, sh, shape_g[2])
            for kx in range(kw):
                j, valid_x = _tap_window(w, padding[1], kx, dw, sw, shape_g[3])
                at = (b, c, i + shift[0], j + shift[1])
                chosen = tirx.all(valid_y, valid_x, wherep[at] == ky * kw + kx)
                total = total + tirx.Select(chosen, gp[at], zero)
        return total

    dx = te.compute(shape_dx, body, name="max_pool2d_grad")
    operands, out = apply_epilogue(dx, epilogue, dtype)
    return [x, g, *operands], [out]
