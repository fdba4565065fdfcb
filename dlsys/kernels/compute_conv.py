"""Compute definitions of sliding-window kernels: 2-d convolution and pooling over NCHW images,
and their adjoints.

Every kernel is given its inputs' shapes, then its output's (the operators' shape rules in
``dlsys.ops.shapes`` computed them), then its window (a pool's ``kernel``, ``stride``,
``padding``) as ``(height, width)`` pairs, and returns ``(inputs, outputs)`` as
``dlsys.kernels.compute`` does. Padding is a block of its own (``"pad"``), so the window
block reads a plain array; the last block is the one a schedule of the ``"window"`` family
shapes.

The adjoints gather rather than scatter: each input element sums over the windows that
cover it, so no two iterations write the same element and every block parallelises. For
the convolution's input that sum is itself a convolution (of the gradient dilated by the
stride and padded, with the filters flipped); for pooling, a padded position ``p`` along
one axis is covered by ``ceil(kernel / stride)`` windows at most: window
``p // stride - r`` at offset ``p % stride + r * stride``, for ``r = 0, 1, ...``, where the
window exists and the offset falls inside the kernel (``_covering``).
"""

from __future__ import annotations

from tvm import te, tirx

from dlsys.kernels.compute import Shape, TensorList

Pair = tuple[int, int]


def _embed(x: te.Tensor, offset: Pair, size: Pair, value, name: str = "pad") -> te.Tensor:
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
    return _embed(x, padding, (h + 2 * ph, w + 2 * pw), value)


def conv2d(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair, padding: Pair,
           dtype: str) -> tuple[TensorList, TensorList]:
    """``Y = X * F``: cross-correlation (as in every DL framework) of NCHW images with OIHW
    filters, output ``shape_y``."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    xp = _pad(x, padding, 0.0)
    sh, sw = stride
    rc = te.reduce_axis((0, shape_f[1]), name="rc")
    ry = te.reduce_axis((0, shape_f[2]), name="ry")
    rx = te.reduce_axis((0, shape_f[3]), name="rx")
    y = te.compute(shape_y,
                   lambda b, o, i, j: te.sum(xp[b, rc, i * sh + ry, j * sw + rx] * f[o, rc, ry, rx],
                                             axis=[rc, ry, rx]),
                   name="conv2d")
    return [x, f], [y]


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
    return _embed(t, shift, size, value, name)


def _dilate_and_pad(g: te.Tensor, kernel: Pair, stride: Pair, padding: Pair,
                    image: Pair) -> te.Tensor:
    """``g`` with ``stride - 1`` zeros between its elements and ``kernel - 1 - padding`` rows
    and columns of zeros around it (a negative amount crops), sized so that a stride-1
    convolution with the flipped filters gives an ``image``-sized result."""
    n, o, rows, cols = (int(d) for d in g.shape)
    (kh, kw), (sh, sw) = kernel, stride
    first_row, first_col = kh - 1 - padding[0], kw - 1 - padding[1]

    def body(b, ch, i, j):
        di, dj = i - first_row, j - first_col
        hit = tirx.all(di >= 0, dj >= 0, di % sh == 0, dj % sw == 0, di // sh < rows,
                       dj // sw < cols)
        return tirx.if_then_else(hit, g[b, ch, di // sh, dj // sw], tirx.const(0, g.dtype))

    return te.compute((n, o, image[0] + kh - 1, image[1] + kw - 1), body, name="pad")


def conv2d_grad_input(shape_g: Shape, shape_f: Shape, shape_x: Shape, stride: Pair,
                      padding: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``dX``: the adjoint of ``conv2d`` in ``X`` applied to ``G`` (the output's gradient):
    ``G`` dilated by the stride and padded, convolved with the filters flipped in space and
    with their channel axes swapped. The padding block does all the index arithmetic, so
    the convolution reads plain arrays; with a stride above 1 it multiplies the zeros
    between ``G``'s elements too (``stride**2`` times the work of the covering windows)."""
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    kh, kw = shape_f[2:]
    gd = _dilate_and_pad(g, (kh, kw), stride, padding, shape_x[2:])
    ro = te.reduce_axis((0, shape_f[0]), name="ro")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    dx = te.compute(shape_x, lambda b, c, h, w: te.sum(
        gd[b, ro, h + ry, w + rx] * f[ro, c, kh - 1 - ry, kw - 1 - rx], axis=[ro, ry, rx]),
        name="conv2d_grad_input")
    return [g, f], [dx]


def conv2d_grad_weight(shape_x: Shape, shape_g: Shape, shape_f: Shape, stride: Pair,
                       padding: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``dF``: the adjoint of ``conv2d`` in ``F``: each filter tap sums ``G`` times the image
    elements it met, over the batch and every output position."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    xp = _pad(x, padding, 0.0)
    sh, sw = stride
    rb = te.reduce_axis((0, shape_g[0]), name="rb")
    ri = te.reduce_axis((0, shape_g[2]), name="ri")
    rj = te.reduce_axis((0, shape_g[3]), name="rj")
    df = te.compute(shape_f,
                    lambda o, c, ky, kx: te.sum(g[rb, o, ri, rj]
                                                * xp[rb, c, ri * sh + ky, rj * sw + kx],
                                                axis=[rb, ri, rj]),
                    name="conv2d_grad_weight")
    return [x, g], [df]


def _window_axes(kernel: Pair) -> tuple[te.IterVar, te.IterVar]:
    return te.reduce_axis((0, kernel[0]), name="ry"), te.reduce_axis((0, kernel[1]), name="rx")


def max_pool2d(shape_x: Shape, shape_y: Shape, kernel: Pair, stride: Pair, padding: Pair,
               dtype: str) -> tuple[TensorList, TensorList]:
    """The maximum of each window; padding is -inf, so it never wins."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    xp = _pad(x, padding, float("-inf"))
    ry, rx = _window_axes(kernel)
    sh, sw = stride
    y = te.compute(shape_y, lambda b, c, i, j: te.max(xp[b, c, i * sh + ry, j * sw + rx],
                                                      axis=[ry, rx]), name="max_pool2d")
    return [x], [y]


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
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    g = te.placeholder(shape_g, dtype=dtype, name="G")
    xp = _pad(x, padding, float("-inf"))
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
    wy, wx = _covering_axes(kernel, stride)
    zero = tirx.const(0, dtype)

    def body(b, c, h, w):
        i, ky, valid_y = _covering(h, padding[0], kernel[0], stride[0], shape_g[2], wy)
        j, kx, valid_x = _covering(w, padding[1], kw, stride[1], shape_g[3], wx)
        chosen = tirx.all(valid_y, valid_x, wherep[b, c, i, j] == ky * kw + kx)
        return te.sum(tirx.Select(chosen, gp[b, c, i, j], zero), axis=[wy, wx])

    return [x, g], [te.compute(shape_dx, body, name="max_pool2d_grad")]
