"""The forward convolution's compute: an implicit GEMM per image (``_implicit_gemm``), vector
lanes along flat output positions padded to whole register tiles, its windows read in place
or from a copy (whole, or a panel at a time) as ``_gemm_layout`` decides. Kernels take their
inputs' and output's shapes, then the window, as ``dlsys.kernels.conv.compute``'s do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te

from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.conv.compute import _group_channel, _span, embed
from dlsys.kernels.conv.schedule import COL_PANELS, GEMM_BLOCK, col_in_panels, gemm_tile, row_panel

Pair = tuple[int, int]


def conv2d(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair, padding: Pair,
           dtype: str) -> tuple[TensorList, TensorList]:
    """``Y = X * F``: cross-correlation (as in every DL framework) of NCHW images with OIHW
    filters, output ``shape_y``, as an implicit GEMM (``_implicit_gemm``)."""
    return conv2d_epilogue(shape_x, shape_f, shape_y, stride, padding, (), dtype)


def conv2d_epilogue(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                    padding: Pair, epilogue: Sequence[tuple[Epilogue, Callable]],
                    dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(X * F)`` in one kernel (a bias per channel, a ReLU: ``compute.Epilogue``
    steps with their formulas); inputs are X, F, then each step's operand."""
    return grouped_conv2d_epilogue(shape_x, shape_f, shape_y, stride, padding, (1, 1), 1,
                                   epilogue, dtype)


def grouped_conv2d(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                   padding: Pair, dilation: Pair, groups: int,
                   dtype: str) -> tuple[TensorList, TensorList]:
    """``conv2d`` with filters dilated by ``dilation`` and the channels in ``groups``
    groups: output channel ``o`` reads the ``shape_f[1]`` image channels of its group."""
    return grouped_conv2d_epilogue(shape_x, shape_f, shape_y, stride, padding, dilation,
                                   groups, (), dtype)


def grouped_conv2d_epilogue(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                            padding: Pair, dilation: Pair, groups: int,
                            epilogue: Sequence[tuple[Epilogue, Callable]],
                            dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(grouped_conv2d)`` in one kernel. ``padding`` is the start padding; the end
    padding is whatever ``shape_y`` needs (zeros)."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    layout = _gemm_layout(shape_f[0], shape_f[1] * shape_f[2] * shape_f[3], shape_y, dtype)

    def weight(o, c, ry, rx):
        return f[o, c, ry, rx]

    if (tuple(shape_f[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
            and layout[0] == shape_y[2] * shape_y[3]):
        # A pointwise convolution over whole tiles of positions: the images are already its
        # windows, read in place (their copy cost a third of the product with 24 channels
        # out, in MobileNet's projections; its 144 -> 24 one ran 1.09x slower in row panels,
        # and its 32 -> 16 one, one tile of channels, 1.1-1.25x slower: one thread, znver4).
        y = _implicit_gemm(x, weight, shape_f, shape_y, stride, (*layout[:2], 0), "conv2d",
                           dilation, groups, in_place=True)
    else:
        span = _span(shape_f[2:], dilation)
        height = max(shape_x[2] + 2 * padding[0], (layout[1] - 1) * stride[0] + span[0])
        width = max(shape_x[3] + 2 * padding[1], (shape_y[3] - 1) * stride[1] + span[1])
        # No padding and no extra rows (a strided pointwise convolution): the windows are
        # copied from the images themselves, not from a copy of them (ResNet-18's 64 -> 128
        # channel one on 56 x 56 pixels 1.03-1.08x faster so, one thread).
        unpadded = padding == (0, 0) and (height, width) == tuple(shape_x[2:])
        xp = x if unpadded else embed(x, padding, (height, width), 0.0)
        # A pointwise convolution's padded images are its windows too, flat (each row as
        # wide as the output's): read in place, no second copy.
        pointwise = tuple(shape_f[2:]) == (1, 1) and tuple(stride) == (1, 1)
        y = _implicit_gemm(xp, weight, shape_f, shape_y, stride, layout, "conv2d", dilation,
                           groups, in_place=pointwise and width == shape_y[3] and not layout[2])
    operands, out = apply_epilogue(y, epilogue, dtype)
    return [x, f, *operands], [out]


def _gemm_layout(channels: int, taps: int, shape_y: Shape, dtype: str
                 ) -> tuple[int, int, int]:
    """``(positions, rows, panel)`` of an implicit GEMM with ``taps`` (channel, filter row,
    filter column) terms per output: flat output positions rounded up to whole register
    tiles (``kernels.conv.gemm_tile``), the output rows that takes, and the positions per
    panel of the windows' copy when it is made a panel at a time, else 0: a few whole output
    rows (``row_panel``), else one register tile's positions (``col_in_panels``)."""
    out_w = shape_y[3]
    columns = gemm_tile(channels, shape_y[2] * out_w, dtype).columns
    panel_rows = row_panel(taps, shape_y[2], out_w, columns, dtype)
    if panel_rows:
        return shape_y[2] * out_w, shape_y[2], panel_rows * out_w
    positions = -(-(shape_y[2] * out_w) // columns) * columns
    panel = columns if col_in_panels(taps, positions, dtype) else 0
    return positions, -(-positions // out_w), panel


def _implicit_gemm(image: te.Tensor, weight, shape_f: Shape, shape_y: Shape, stride: Pair,
                   layout: tuple[int, int, int], name: str, dilation: Pair = (1, 1),
                   groups: int = 1, in_place: bool = False) -> te.Tensor:
    """``Y[b, o, p] = sum_k weight(o, k) col[b, k, p]`` over flat output positions ``p``.

    ``layout`` is ``_gemm_layout``'s ``(positions, rows, panel)``; ``image`` is padded, with
    zero rows enough below for those output rows (the extra positions' results are never
    stored). ``col`` holds each window tap's plane of positions, so the product reads whole
    vectors of it; with a ``panel`` size, it holds them a panel of that many positions after
    another (``COL_PANELS``: each panel's taps side by side, so that the schedule can copy
    one panel just before the product reads it; a panel of whole output rows is copied a
    shifted image row at a time). ``weight(o, c, ry, rx)`` is the filter tap.
    With ``groups``, ``k`` runs over the channels of ``o``'s group only. ``in_place``: the
    product reads ``image`` itself, with no copy, where every position's window lies in it.
    """
    n, channels, kh, kw = shape_y[0], shape_f[1], shape_f[2], shape_f[3]
    out_h, out_w = shape_y[2:]
    positions, rows, panel = layout
    (sh, sw), (dh, dw) = stride, dilation
    per_group_out = shape_y[1] // groups
    if in_place:
        def col_at(b, c, ry, rx, p):
            return image[b, c, p // out_w * sh + ry * dh, p % out_w * sw + rx * dw]
    elif panel:
        def window(b, t, c, ry, rx, lane):
            p = t * panel + lane
            return image[b, c, p // out_w * sh + ry * dh, p % out_w * sw + rx * dw]

        col = te.compute((n, positions // panel, int(image.shape[1]), kh, kw, panel), window,
                         name=COL_PANELS)

        def col_at(b, c, ry, rx, p):
            return col[b, p // panel, c, ry, rx, p % panel]
    else:
        col = te.compute((n, int(image.shape[1]), kh, kw, rows, out_w),
                         lambda b, c, ry, rx, i, j: image[b, c, i * sh + ry * dh,
                                                          j * sw + rx * dw],
                         name="col")

        def col_at(b, c, ry, rx, p):
            return col[b, c, ry, rx, p // out_w, p % out_w]

    rc = te.reduce_axis((0, channels), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def product(b, o, p):
        c = _group_channel(o, per_group_out, channels, groups, rc)
        return te.sum(weight(o, rc, ry, rx) * col_at(b, c, ry, rx, p), axis=[rc, ry, rx])

    gemm = te.compute((n, shape_y[1], positions), product, name=GEMM_BLOCK)
    return te.compute(shape_y, lambda b, o, i, j: gemm[b, o, i * out_w + j], name=name)
