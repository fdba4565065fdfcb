"""Compute definitions of sliding-window kernels: pooling over NCHW images, and the adjoints
of 2-d convolution and of pooling (the forward convolution is ``dlsys.kernels.conv.gemm``'s
implicit GEMM, which shares the padding and window helpers here).

Every kernel is given its inputs' shapes, then its output's (the operators' shape rules in
``dlsys.ops.shapes`` computed them), then its window (a pool's ``kernel``, ``stride``,
``padding``) as ``(height, width)`` pairs, and returns ``(inputs, outputs)`` as
``dlsys.kernels.compute`` does. Padding is a block of its own (``"pad"``), so the window
block reads a plain array (the max pool instead tests each window row it reads, once per
row: ``dilated_max_pool2d``); the last block is the one a schedule of the ``"window"``
family shapes.

The adjoints gather rather than scatter: each input element sums over the windows that
cover it, so no two iterations write the same element and every block parallelises. For
the convolution's input that sum is itself a convolution (of the gradient dilated by the
stride and padded, with the filters flipped); for pooling, a padded position ``p`` along
one axis is covered by ``ceil(kernel / stride)`` windows at most: window
``p // stride - r`` at offset ``p % stride + r * stride``, for ``r = 0, 1, ...``, where the
window exists and the offset falls inside the kernel (``_covering``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels import cpu
from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.conv.schedule import DIRECT_BLOCK, WEIGHT_BLOCK, weight_partials
from dlsys.kernels.conv.window_schedule import POOL_ROWS

Pair = tuple[int, int]


def embed(x: te.Tensor, offset: Pair, size: Pair, value, name: str = "pad") -> te.Tensor:
    """``x`` placed at ``offset`` in images of ``size`` filled with ``value``.

    The one place where a load may fall outside its tensor, and it happens only under
    ``if_then_else``: building the PrimFunc assumes every index it sees is in range (a
    clamp written around an index is simplified away, and a block whose index can leave
    its tensor may be miscompiled), so the window blocks read only padded copies, with
    indices in range by construction.
    """
    n, c, h, w = (int(d) for d in x.shape)
    (oh, ow) = offset

    def body(b, ch, i, j):
        inside = tirx.all(i >= oh, i < h + oh, j >= ow, j < w + ow)
        return tirx.if_then_else(inside, x[b, ch, i - oh, j - ow], tirx.const(value, x.dtype))

    return te.compute((n, c, *size), body, name=name)


def _pad(x: te.Tensor, padding: Pair, value: float) -> te.Tensor:
    """``x`` with ``padding`` rows and columns of ``value`` on each side; ``x`` itself when
    there is none, so an unpadded kernel has no copy."""
    if padding == (0, 0):
        return x
    (ph, pw), (h, w) = padding, (int(d) for d in x.shape[2:])
    return embed(x, padding, (h + 2 * ph, w + 2 * pw), value)


def _pad_to(x: te.Tensor, padding: Pair, out: Sequence[int], kernel: Pair, stride: Pair,
            value: float, dilation: Pair = (1, 1)) -> te.Tensor:
    """``x`` padded with ``value``: ``padding`` before each axis and after it as far as
    ``out`` windows reach (at least as much as before, so that an evenly padded pool keeps
    its copy); ``x`` itself when that is no padding at all."""
    size = tuple(max(int(x.shape[2 + a]) + 2 * padding[a],
                     (out[a] - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1)
                 for a in range(2))
    if padding == (0, 0) and size == tuple(int(d) for d in x.shape[2:]):
        return x
    return embed(x, padding, size, value)


def _span(kernel: Sequence[int], dilation: Pair) -> Pair:
    """The extent of a dilated window along each axis."""
    return tuple((int(k) - 1) * d + 1 for k, d in zip(kernel, dilation))


def _group_channel(o, per_group_out: int, per_group_in: int, groups: int, c):
    """The image channel that channel ``c`` of output channel ``o``'s group is: ``c`` itself
    when there is one group (no index arithmetic in the common kernel)."""
    if groups == 1:
        return c
    return (o // per_group_out) * per_group_in + c


def _covering(position, padding: int, kernel: int, stride: int, windows: int, r):
    """The ``r``-th window covering ``position`` along one axis, as ``(index, offset,
    valid)``: the window's index in a copy of the windows shifted by ``ceil(kernel /
    stride) - 1`` (``_windows_padded``, so that the index is never negative), the
    position's offset inside it, and whether that window exists and covers the position."""
    p = position + padding
    window = p // stride - r
    offset = p % stride + r * stride
    shift = -(-kernel // stride) - 1
    return window + shift, offset, tirx.all(window >= 0, window < windows, offset < kernel)


def _covering_axes(kernel: Pair, stride: Pair) -> tuple[te.IterVar, te.IterVar]:
    """Reduction axes over the windows covering one element: ``ceil(kernel / stride)`` each."""
    return (te.reduce_axis((0, -(-kernel[0] // stride[0])), name="wy"),
            te.reduce_axis((0, -(-kernel[1] // stride[1])), name="wx"))


def _windows_padded(t: te.Tensor, image: Pair, kernel: Pair, stride: Pair, padding: Pair,
                    value, name: str) -> te.Tensor:
    """A per-window tensor ``t`` (N, C, H', W') in a copy large enough for every index
    ``_covering`` gives over an ``image`` (``value`` where no window is)."""
    shift = tuple(-(-k // s) - 1 for k, s in zip(kernel, stride))
    size = tuple((n - 1 + p) // s + 1 + d for n, p, s, d in zip(image, padding, stride, shift))
    if shift == (0, 0) and size == tuple(int(d) for d in t.shape[2:]):
        return t  # windows side by side, no padding: every index is already in range
    return embed(t, shift, size, value, name)


def _dilate_and_pad(g: te.Tensor, kernel: Pair, stride: Pair, padding: Pair,
                    size: Pair) -> te.Tensor:
    """``g`` with ``stride - 1`` zeros between its elements and ``kernel - 1 - padding`` rows
    and columns of zeros before it (a negative amount crops), zeros after it up to ``size``:
    a stride-1 convolution of it with the flipped filters gives the input's gradient."""
    n, o, rows, cols = (int(d) for d in g.shape)
    (kh, kw), (sh, sw) = kernel, stride
    first_row, first_col = kh - 1 - padding[0], kw - 1 - padding[1]

    def body(b, ch, i, j):
        di, dj = i - first_row, j - first_col
        hit = tirx.all(di >= 0, dj >= 0, di % sh == 0, dj % sw == 0, di // sh < rows,
                       dj // sw < cols)
        return tirx.if_then_else(hit, g[b, ch, di // sh, dj // sw], tirx.const(0, g.dtype))

    return te.compute((n, o, *size), body, name="pad")


def conv2d_grad_input(shape_g: Shape, shape_f: Shape, shape_x: Shape, stride: Pair,
                      padding: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` of ``conv2d``: ``conv2d_grad_input_epilogue`` with no epilogue."""
    return conv2d_grad_input_epilogue(shape_g, shape_f, shape_x, stride, padding, (), dtype)


def conv2d_grad_input_epilogue(shape_g: Shape, shape_f: Shape, shape_x: Shape, stride: Pair,
                               padding: Pair, epilogue: Sequence[tuple[Epilogue, Callable]],
                               dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(dX)`` (the relu gradient of the layer below, ``compute.Epilogue`` steps)
    in one kernel; inputs are G, F, then each step's operand: the grouped kernel's with one
    group and no dilation."""
    return grouped_conv2d_grad_input_epilogue(shape_g, shape_f, shape_x, stride, padding,
                                              (1, 1), 1, epilogue, dtype)


def grouped_conv2d_grad_input(shape_g: Shape, shape_f: Shape, shape_x: Shape, stride: Pair,
                              padding: Pair, dilation: Pair, groups: int,
                              dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` of ``grouped_conv2d``, no epilogue."""
    return grouped_conv2d_grad_input_epilogue(shape_g, shape_f, shape_x, stride, padding,
                                              dilation, groups, (), dtype)


def grouped_conv2d_grad_input_epilogue(shape_g: Shape, shape_f: Shape, shape_x: Shape,
                                       stride: Pair, padding: Pair, dilation: Pair, groups: int,
                                       epilogue: Sequence[tuple[Epilogue, Callable]],
                                       dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` is the adjoint of the convolution in ``X`` applied to ``G`` (the output's
    gradient): ``G`` dilated by the stride and padded, convolved with the filters flipped in
    space, dilated as they were, and with their channel axes swapped within each group. The
    padding block does all the index arithmetic, so the convolution reads plain arrays; with
    a stride above 1 it multiplies the zeros between ``G``'s elements too (``stride**2``
    times the work of the covering windows).

    A direct convolution (``kernels.conv``'s ``conv_direct``): vector lanes run along rows
    of ``dX``, padded to whole vectors, and read shifted rows of the padded ``G`` with no
    copy of its windows (measured on LeNet's second layer, 1.6x faster than the implicit
    GEMM, whose window copy is 16 channels x 25 taps wide here)."""
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    kh, kw = shape_f[2:]
    (dh, dw) = dilation
    span_h, span_w = _span((kh, kw), dilation)
    lanes = cpu.host().lanes(dtype)
    width = -(-shape_x[3] // lanes) * lanes
    gd = _dilate_and_pad(g, (span_h, span_w), stride, padding,
                         (shape_x[2] + span_h - 1, width + span_w - 1))
    per_group_out, per_group_in = shape_f[0] // groups, shape_f[1]
    ro = te.reduce_axis((0, per_group_out), name="ro")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def direct(b, c, h, w):
        if groups == 1:
            o, c_in_group = ro, c
        else:
            o, c_in_group = (c // per_group_in) * per_group_out + ro, c % per_group_in
        return te.sum(gd[b, o, h + ry * dh, w + rx * dw]
                      * f[o, c_in_group, kh - 1 - ry, kw - 1 - rx], axis=[ro, ry, rx])

    rows = te.compute((shape_x[0], shape_x[1], shape_x[2], width), direct, name=DIRECT_BLOCK)
    dx = te.compute(shape_x, lambda b, c, h, w: rows[b, c, h, w], name="conv2d_grad_input")
    operands, out = apply_epilogue(dx, epilogue, dtype)
    return [g, f, *operands], [out]


def conv2d_grad_weight(shape_x: Shape, shape_g: Shape, shape_f: Shape, stride: Pair,
                       padding: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``dF`` of ``conv2d``: the grouped kernel's with one group and no dilation."""
    return grouped_conv2d_grad_weight(shape_x, shape_g, shape_f, stride, padding, (1, 1), 1,
                                      dtype)


def grouped_conv2d_grad_weight(shape_x: Shape, shape_g: Shape, shape_f: Shape, stride: Pair,
                               padding: Pair, dilation: Pair, groups: int,
                               dtype: str) -> tuple[TensorList, TensorList]:
    """``dF``: the adjoint of the convolution in ``F``: each filter tap sums ``G`` times the
    image elements it met (in its group's channels), over the batch and every output
    position.

    Vector lanes run along output rows, each keeping a partial sum (``kernels.conv``): ``G``'s
    rows are padded with zeros to whole vectors, the image with zero columns to match, and
    the batch (in chunks, padded with zero images) is shared between ``partials``; the last
    block adds the partials and the lanes.
    """
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    n, out_channels, out_h, out_w = shape_g
    _, channels, kh, kw = shape_f
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    span_h, span_w = _span((kh, kw), dilation)
    lanes = cpu.host().lanes(dtype)
    width = -(-out_w // lanes) * lanes
    partials, per_partial, chunk = weight_partials(n)
    images = partials * per_partial * chunk
    zero = tirx.const(0, dtype)
    per_group_out = out_channels // groups

    def padded_image(b, c, i, j):
        inside = tirx.all(b < n, i >= ph, i < shape_x[2] + ph, j >= pw, j < shape_x[3] + pw)
        return tirx.if_then_else(inside, x[b, c, i - ph, j - pw], zero)

    xp = te.compute((images, shape_x[1], max(shape_x[2] + 2 * ph, (out_h - 1) * sh + span_h),
                     max(shape_x[3] + 2 * pw, (width - 1) * sw + span_w)), padded_image,
                    name="pad")
    gp = te.compute((images, out_channels, out_h, width),
                    lambda b, o, i, j: tirx.if_then_else(tirx.all(b < n, j < out_w),
                                                         g[b, o, i, j], zero), name="pad_g")
    rb = te.reduce_axis((0, chunk), name="rb")
    ri = te.reduce_axis((0, out_h), name="ri")
    rv = te.reduce_axis((0, width // lanes), name="rv")

    def chunk_sum(t, q, o, c, ky, kx, lane):
        b = (t * per_partial + q) * chunk + rb
        j = rv * lanes + lane
        channel = _group_channel(o, per_group_out, channels, groups, c)
        return te.sum(gp[b, o, ri, j] * xp[b, channel, ri * sh + ky * dh, j * sw + kx * dw],
                      axis=[rb, ri, rv])

    per_chunk = te.compute((partials, per_partial, out_channels, channels, kh, kw, lanes),
                           chunk_sum, name=WEIGHT_BLOCK)
    rq = te.reduce_axis((0, per_partial), name="rq")
    partial = te.compute((partials, out_channels, channels, kh, kw, lanes),
                         lambda t, o, c, ky, kx, lane: te.sum(per_chunk[t, rq, o, c, ky, kx, lane],
                                                              axis=rq), name="partial")
    rt = te.reduce_axis((0, partials), name="rt")
    rl = te.reduce_axis((0, lanes), name="rl")
    df = te.compute(shape_f, lambda o, c, ky, kx: te.sum(partial[rt, o, c, ky, kx, rl],
                                                         axis=[rt, rl]), name="conv2d_grad_weight")
    return [x, g], [df]


def _window_axes(kernel: Pair) -> tuple[te.IterVar, te.IterVar]:
    return te.reduce_axis((0, kernel[0]), name="ry"), te.reduce_axis((0, kernel[1]), name="rx")


def max_pool2d(shape_x: Shape, shape_y: Shape, kernel: Pair, stride: Pair, padding: Pair,
               dtype: str) -> tuple[TensorList, TensorList]:
    """The maximum of each window; padding is -inf, so it never wins. ``padding`` pads the
    start of each axis; the end is padded as far as ``shape_y``'s windows reach."""
    return dilated_max_pool2d(shape_x, shape_y, kernel, stride, padding, (1, 1), dtype)


def dilated_max_pool2d(shape_x: Shape, shape_y: Shape, kernel: Pair, stride: Pair,
                       padding: Pair, dilation: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``max_pool2d`` over windows taking every ``dilation``-th element, in two separable
    steps: ``rows[i, j]``, the maximum over the window's rows of column ``j`` (read straight
    from ``X``, rows outside it skipped, columns outside it -inf), then each output the
    maximum of ``kernel[1]`` elements of its row of ``rows`` (``POOL_ROWS``: the schedule
    keeps one row of it in cache, so no padded copy of the image is written; 3 x 3 windows
    take 3 + 3 maxima, not 9). Starting from the first tap, not from the lowest float, a
    window of -inf gives -inf."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    height, width = shape_x[2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    out_h, out_w = shape_y[2:]
    columns = max(width + pw, (out_w - 1) * sw + (kw - 1) * dw + 1)
    lowest = tirx.const(float("-inf"), dtype)

    def row_max(b, c, i, j):
        taps = []
        for ry in range(kh):
            row = i * sh + ry * dh - ph
            # The condition is the same for every column: it costs nothing per element.
            taps.append(tirx.if_then_else(tirx.all(row >= 0, row < height),
                                          x[b, c, row, j - pw], lowest))
        if pw == 0 and columns == width:
            return _maximum(taps)
        return tirx.if_then_else(tirx.all(j >= pw, j < width + pw), _maximum(taps), lowest)

    rows = te.compute((shape_y[0], shape_y[1], out_h, columns), row_max, name=POOL_ROWS)
    y = te.compute(shape_y, lambda b, c, i, j: _maximum(
        [rows[b, c, i, j * sw + rx * dw] for rx in range(kw)]), name="max_pool2d")
    return [x], [y]


def _maximum(values: Sequence) -> tirx.PrimExpr:
    """The largest of ``values`` (at least one), as one expression."""
    result = values[0]
    for value in values[1:]:
        result = tirx.max(result, value)
    return result


def avg_pool2d(shape_x: Shape, shape_y: Shape, kernel: Pair, stride: Pair, padding: Pair,
               dtype: str) -> tuple[TensorList, TensorList]:
    """The mean of each window, padding counted as zeros (PyTorch's count_include_pad)."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    xp = _pad(x, padding, 0.0)
    ry, rx = _window_axes(kernel)
    sh, sw = stride
    # The divisor folded into each term, as reduce_mean does: one reduction block.
    scale = tirx.const(1.0 / (kernel[0] * kernel[1]), dtype)
    y = te.compute(shape_y, lambda b, c, i, j: te.sum(xp[b, c, i * sh + ry, j * sw + rx] * scale,
                                                      axis=[ry, rx]), name="avg_pool2d")
    return [x], [y]


def avg_pool2d_grad(shape_g: Shape, shape_x: Shape, kernel: Pair, stride: Pair, padding: Pair,
                    dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` of ``avg_pool2d``: each element gets its covering windows' gradients over the
    window's size."""
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    gp = _windows_padded(g, shape_x[2:], kernel, stride, padding, 0.0, "pad")
    wy, wx = _covering_axes(kernel, stride)
    scale = tirx.const(1.0 / (kernel[0] * kernel[1]), dtype)
    zero = tirx.const(0, dtype)

    def body(b, c, h, w):
        i, _, valid_y = _covering(h, padding[0], kernel[0], stride[0], shape_g[2], wy)
        j, _, valid_x = _covering(w, padding[1], kernel[1], stride[1], shape_g[3], wx)
        return te.sum(tirx.Select(tirx.all(valid_y, valid_x), gp[b, c, i, j] * scale, zero),
                      axis=[wy, wx])

    return [g], [te.compute(shape_x, body, name="avg_pool2d_grad")]


def _first_max(lhs, rhs):
    """Combine two (offset, value) candidates: the larger value, the smaller offset on a tie.
    Order-independent, so the reduction may run in any order and still pick PyTorch's
    element (the first maximum of the window)."""
    take_rhs = tirx.any(rhs[1] > lhs[1], tirx.all(rhs[1] == lhs[1], rhs[0] < lhs[0]))
    return tirx.Select(take_rhs, rhs[0], lhs[0]), tirx.Select(take_rhs, rhs[1], lhs[1])


def _no_candidate(offset_dtype, value_dtype):
    return tirx.const(2**30, offset_dtype), tirx.const(float("-inf"), value_dtype)


_argmax = te.comm_reducer(_first_max, _no_candidate, name="first_argmax")


def max_pool2d_grad(shape_x: Shape, shape_g: Shape, shape_dx: Shape, kernel: Pair, stride: Pair,
                    padding: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``dX`` of ``max_pool2d``: each window's gradient goes to the first maximum of the
    window (as in PyTorch), found again from ``X`` by the ``argmax`` block."""
    return max_pool2d_grad_epilogue(shape_x, shape_g, shape_dx, kernel, stride, padding, (),
                                    dtype)


def max_pool2d_grad_epilogue(shape_x: Shape, shape_g: Shape, shape_dx: Shape, kernel: Pair,
                             stride: Pair, padding: Pair,
                             epilogue: Sequence[tuple[Epilogue, Callable]],
                             dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(dX)`` of ``max_pool2d`` in one kernel (the relu gradient of the layer below,
    ``compute.Epilogue`` steps); inputs are X, G, then each step's operand.

    The few windows covering an element (``ceil(kernel / stride)`` per axis) are summed as
    one expression, not a reduction, so the epilogue folds into the same loop."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    xp = _pad_to(x, padding, shape_g[2:], kernel, stride, float("-inf"))
    ry, rx = _window_axes(kernel)
    sh, sw = stride
    kw = kernel[1]
    where, _ = te.compute(
        shape_g, lambda b, c, i, j: _argmax(((ry * kw + rx).astype("int32"),
                                             xp[b, c, i * sh + ry, j * sw + rx]), axis=[ry, rx]),
        name="argmax")
    # Padded copies: -1 is no window's offset, so no gradient comes from outside.
    wherep = _windows_padded(where, shape_dx[2:], kernel, stride, padding, -1, "pad_argmax")
    gp = _windows_padded(g, shape_dx[2:], kernel, stride, padding, 0.0, "pad_g")
    zero = tirx.const(0, dtype)
    covering = [-(-k // s) for k, s in zip(kernel, stride)]

    def body(b, c, h, w):
        total = zero
        for wy in range(covering[0]):
            i, ky, valid_y = _covering(h, padding[0], kernel[0], stride[0], shape_g[2], wy)
            for wx in range(covering[1]):
                j, kx, valid_x = _covering(w, padding[1], kw, stride[1], shape_g[3], wx)
                chosen = tirx.all(valid_y, valid_x, wherep[b, c, i, j] == ky * kw + kx)
                total = total + tirx.Select(chosen, gp[b, c, i, j], zero)
        return total

    dx = te.compute(shape_dx, body, name="max_pool2d_grad")
    operands, out = apply_epilogue(dx, epilogue, dtype)
    return [x, g, *operands], [out]
