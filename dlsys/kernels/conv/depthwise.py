"""Depthwise convolution: each image channel convolved with its own single filter (a grouped
convolution with one channel per group, MobileNet's and EfficientNet's 3x3 and 5x5 layers),
its compute and its CPU schedule side by side.

A depthwise layer does ``kh * kw`` multiply-adds per output element, against ``C * kh * kw``
for a full convolution, so it is bound by memory and by the cost of each plane's set-up, not
by arithmetic: the implicit GEMM's copy of every window (``compute._implicit_gemm``) would
cost more than the product. Here each output is the sum of its window's taps written out as
one expression over a padded copy of the image rows it reads, made a few output rows at a
time, in L1::

    parallel for (b, c) in N x C:
        for group of output rows (rows_per_pad):
            pad = the image rows the group reads, with their zero border
            for row in group, column in row:           # one vector loop
                Y[b, c, row, column] = epilogue(sum over ry, rx of
                                                F[c, ry, rx] * pad[row + ry, column + rx])

The vector loop runs along an output row, whatever the stride: a long row is left to LLVM's
loop vectoriser, which loads a stride-2 row as whole vectors and shuffles them (TVM's vector
loop would load each lane on its own), and a row of at most ``SHORT_ROW_VECTORS`` vectors
is vectorised by TVM (LLVM unrolls so short a loop whole and gathers its strided loads).
How many rows share a padded copy (``rows_per_pad``) was measured on MobileNet v2's layers;
this replaced register tiles over a padded plane and, for small planes, a grid of phase
planes, which ran 1.15-4.3x slower on every one of them (one thread, znver4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import s_tir, te

from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.conv.compute import embed
from dlsys.kernels.conv.schedule import fold_epilogue, vectorize_innermost

Pair = tuple[int, int]
DEPTHWISE_SUMS = "depthwise_sums"
# The block annotations through which the compute tells the schedule its ``rows_per_pad``
# and whether its rows are ``short_rows``.
ROWS_PER_PAD = "rows_per_pad"
SHORT_ROWS = "short_rows"
# An output row whose windows start within this many vectors is short: TVM vectorises it.
SHORT_ROW_VECTORS = 2
# Output rows per padded copy where rows are long (a divisor of the height, at most this):
# MobileNet's 112 and 56 pixel layers ran 1.2-1.6x faster with 4 than with 1 (each image row
# copied 1.5 or 1.25 times, not 3 or 1.5), 8 and 16 no faster (one thread).
LONG_ROWS_PER_PAD = 4
# Short output rows padded as a whole plane are unrolled this many at a time (at most).
UNROLLED_SHORT_ROWS = 4


def depthwise_conv2d(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                     padding: Pair, dilation: Pair, dtype: str) -> tuple[TensorList, TensorList]:
    """``Y[b, c] = X[b, c] * F[c, 0]``: NCHW images with (C, 1, kh, kw) filters."""
    return depthwise_conv2d_epilogue(shape_x, shape_f, shape_y, stride, padding, dilation, (),
                                     dtype)


def depthwise_conv2d_epilogue(shape_x: Shape, shape_f: Shape, shape_y: Shape, stride: Pair,
                              padding: Pair, dilation: Pair,
                              epilogue: Sequence[tuple[Epilogue, Callable]],
                              dtype: str) -> tuple[TensorList, TensorList]:
    """``epilogue(depthwise_conv2d)`` in one kernel (a bias per channel, a ReLU6...); inputs
    are X, F, then each step's operand. ``padding`` pads the start of each axis; the end is
    padded with zeros as far as ``shape_y``'s windows reach."""
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    kh, kw = shape_f[2:]
    (sh, sw), (dh, dw) = stride, dilation
    out_h, out_w = shape_y[2:]
    size = (max(shape_x[2] + padding[0], (out_h - 1) * sh + (kh - 1) * dh + 1),
            max(shape_x[3] + padding[1], (out_w - 1) * sw + (kw - 1) * dw + 1))
    xp = embed(x, padding, size, 0.0)

    def window_sum(b, c, i, j):
        total = None
        for ry in range(kh):
            for rx in range(kw):
                term = xp[b, c, i * sh + ry * dh, j * sw + rx * dw] * f[c, 0, ry, rx]
                total = term if total is None else total + term
        return total

    attrs = {ROWS_PER_PAD: rows_per_pad(shape_y, stride, dtype),
             SHORT_ROWS: int(short_rows(out_w, sw, dtype))}
    sums = te.compute(shape_y, window_sum, name=DEPTHWISE_SUMS, attrs=attrs)
    y = te.compute(shape_y, lambda b, c, i, j: sums[b, c, i, j], name="depthwise_conv2d")
    operands, out = apply_epilogue(y, epilogue, dtype)
    return [x, f, *operands], [out]


def short_rows(out_w: int, stride_w: int, dtype: str) -> bool:
    """Whether an output row's windows start within ``SHORT_ROW_VECTORS`` vectors of the
    image (MobileNet's 56 pixel planes at stride 2, 28 outputs a row, ran 1.4x faster as
    long rows)."""
    return out_w * stride_w <= SHORT_ROW_VECTORS * cpu_facts.host().lanes(dtype)


def rows_per_pad(shape_y: Shape, stride: Pair, dtype: str) -> int:
    """How many output rows share one padded copy of the image rows they read: the largest
    divisor of the height up to ``LONG_ROWS_PER_PAD`` for long rows; for short ones, the
    whole plane at stride 1 (MobileNet's 7 and 14 pixel planes 3.5-4x faster than one row at
    a time, 1.9x than two) but one row at a larger stride (its 28 and 14 pixel planes at
    stride 2 2.2-2.8x faster than two rows, or the whole plane, at a time; one thread)."""
    out_h, out_w = shape_y[2:]
    if not short_rows(out_w, stride[1], dtype):
        limit = LONG_ROWS_PER_PAD
    elif max(stride) == 1:
        limit = out_h
    else:
        limit = 1
    return max(r for r in range(1, limit + 1) if out_h % r == 0)


def schedule_depthwise(sch: s_tir.Schedule) -> None:
    """(image, channel) planes in parallel; per group of ``rows_per_pad`` output rows, the
    padded image rows they read (in L1, its border filled apart so that the copy has no test
    per element), then each row's outputs, sums and epilogue in one vector loop (TVM's for a
    short row, LLVM's for a long one)."""
    sums = sch.get_sblock(DEPTHWISE_SUMS)
    together = int(sch.get(sums).annotations[ROWS_PER_PAD])
    short = bool(sch.get(sums).annotations[SHORT_ROWS])
    (pad,) = sch.get_producers(sums)
    out = fold_epilogue(sch, sums)
    sch.compute_inline(sums)
    image, channel, row, column = sch.get_loops(out)
    plane = sch.fuse(image, channel)
    sch.parallel(plane)
    height = int(sch.get(row).extent)
    if together == height:
        sch.compute_at(pad, plane, preserve_unit_loops=True)
    else:
        if together > 1:
            row, _ = sch.split(row, factors=[None, together])
        sch.compute_at(pad, row, preserve_unit_loops=True)
    _copy_with_border(sch, pad)
    if short:
        sch.vectorize(column)
    if short and together == height:
        # Rows unrolled in small groups: each loaded image row serves every output row
        # whose window holds it (MobileNet's 14 and 28 pixel planes 1.1-1.2x faster).
        step = max(r for r in range(1, UNROLLED_SHORT_ROWS + 1) if height % r == 0)
        if step > 1:
            _, inner = sch.split(row, factors=[None, step])
            sch.unroll(inner)


def _copy_with_border(sch: s_tir.Schedule, pad) -> None:
    """The padded rows as their zero fill, then the image's rows copied inside it with no
    test per element, where the copy's pattern allows (a plain border; TVM's vectorised
    loop with the test loaded each lane on its own), else as one guarded loop."""
    loops = sch.get_loops(pad)
    if sch.can_decompose_padding(pad, loops[-2]):
        fill = sch.decompose_padding(pad, loops[-2])
        vectorize_innermost(sch, fill)
    vectorize_innermost(sch, pad)
