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

A small plane at stride 1 whose output rows are as wide as the image's (``flat_plane``: a
"same" convolution, MobileNet's 7 x 7 and 14 x 14 layers) is one flat row instead: the
image copied once with zeros before and after it, each tap a whole vector of it shifted by
``ry * width + rx`` (a tap that falls off the start or end of an output row masked to
zero), the sums a few whole vectors per plane, then written back flat::

    parallel for (b, c) in N x C:
        flat = zeros, X[b, c] (rows one after the other), zeros
        for v in vectors of the plane:                 # unrolled
            sums[v] = sum over ry, rx of F[c, ry, rx] * flat[v + ry * width + rx] (masked)
        Y[b, c] = epilogue(sums)                       # flat, its real positions only

Short rows of 7 or 14 elements padded each to a vector cost more than these shifts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import s_tir, te, tirx

from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.compute import Shape, TensorList
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue
from dlsys.kernels.common.loops import all_blocks
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
DEPTHWISE_FLAT = "depthwise_flat"
# Vectors of a plane's positions up to which a stride-1 plane is one flat row (``flat_plane``):
# MobileNet v2's 7 x 7 planes (4 vectors) ran 1.9-2x and its 14 x 14 ones (13) 1-1.2x faster
# so, its 28 x 28 ones (49) 1.2x slower (one thread, znver4).
FLAT_MAX_VECTORS = 16


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
    if flat_plane(shape_x, shape_y, stride, dtype):
        sums = _flat_sums(x, f, shape_y, padding, dilation, dtype)
        width = shape_x[3]
        y = te.compute(shape_y, lambda b, c, i, j: sums[b, c, i * width + j],
                       name="depthwise_conv2d")
        operands, out = apply_epilogue(y, epilogue, dtype)
        return [x, f, *operands], [out]
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


def flat_plane(shape_x: Shape, shape_y: Shape, stride: Pair, dtype: str) -> bool:
    """Whether the convolution runs each plane as one flat row (the module's last sketch):
    stride 1, short output rows (``short_rows``) as wide as the image's, at most
    ``FLAT_MAX_VECTORS`` vectors of output positions."""
    positions = shape_y[2] * shape_y[3]
    return (tuple(stride) == (1, 1) and shape_y[3] == shape_x[3]
            and short_rows(shape_y[3], 1, dtype)
            and positions <= FLAT_MAX_VECTORS * cpu_facts.host().lanes(dtype))


def _flat_sums(x: te.Tensor, f: te.Tensor, shape_y: Shape, padding: Pair, dilation: Pair,
               dtype: str) -> te.Tensor:
    """Each plane's window sums over flat output positions, padded to whole vectors (those
    past the plane are never stored), from a flat copy of the image with ``padding`` rows
    (and columns) of zeros before it and enough after: output position ``p`` reads tap
    ``(ry, rx)`` at ``p + ry * dh * width + rx * dw``, masked where the tap's column falls
    outside the image (the flat row would wrap to the next or previous image row)."""
    n, channels, height, width = (int(d) for d in x.shape)
    kh, kw = (int(d) for d in f.shape[2:])
    (ph, pw), (dh, dw) = padding, dilation
    lanes = cpu_facts.host().lanes(dtype)
    positions = -(-shape_y[2] * shape_y[3] // lanes) * lanes
    start = ph * width + pw
    zero = tirx.const(0, dtype)

    def flat(b, c, q):
        t = q - start
        return tirx.if_then_else(tirx.all(t >= 0, t < height * width),
                                 x[b, c, t // width, t % width], zero)

    length = positions + (kh - 1) * dh * width + (kw - 1) * dw
    image = te.compute((n, channels, length), flat, name="pad")

    def window_sum(b, c, p):
        total = None
        for ry in range(kh):
            for rx in range(kw):
                tap = image[b, c, p + ry * dh * width + rx * dw]
                shift = rx * dw - pw
                if shift < 0:
                    tap = tirx.Select(p % width >= -shift, tap, zero)
                elif shift > 0:
                    tap = tirx.Select(p % width < width - shift, tap, zero)
                term = tap * f[c, 0, ry, rx]
                total = term if total is None else total + term
        return total

    return te.compute((n, channels, positions), window_sum, name=DEPTHWISE_FLAT)


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
    short row, LLVM's for a long one); a flat plane's as ``_schedule_flat``."""
    if any(sch.get(block).name_hint == DEPTHWISE_FLAT for block in all_blocks(sch)):
        _schedule_flat(sch)
        return
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


def _schedule_flat(sch: s_tir.Schedule) -> None:
    """Planes in parallel; per plane the flat padded copy, the sums a whole vector at a time
    (unrolled), then the flat write-back with the epilogue, clipped to the plane. The sums
    stay in the default scope: the compiler keeps them on the stack, where a "local" buffer
    was allocated as a workspace per plane (a call each way, twice as slow on 7 x 7 planes)."""
    sums = sch.get_sblock(DEPTHWISE_FLAT)
    (pad,) = sch.get_producers(sums)
    out = fold_epilogue(sch, sums)
    width = int(sch.get(out).iter_vars[3].dom.extent)
    sch.transform_block_layout(out, lambda b, c, i, j: (b, c, i * width + j))
    image, channel, position = sch.get_loops(sums)
    plane = sch.fuse(image, channel)
    sch.parallel(plane)
    # From the sums' side, so that they cover whole vectors, not only the stored positions.
    sch.reverse_compute_at(out, plane, preserve_unit_loops=True)
    sch.compute_at(pad, plane, preserve_unit_loops=True)
    _copy_with_border(sch, pad)
    lanes = cpu_facts.host().lanes(str(sch.get(sums).writes[0].source.dtype))
    vectors, lane = sch.split(position, factors=[None, lanes])
    sch.unroll(vectors)
    sch.vectorize(lane)


def _copy_with_border(sch: s_tir.Schedule, pad) -> None:
    """The padded rows as their zero fill, then the image's rows copied inside it with no
    test per element, where the copy's pattern allows (a plain border; TVM's vectorised
    loop with the test loaded each lane on its own), else as one guarded loop."""
    loops = sch.get_loops(pad)
    if sch.can_decompose_padding(pad, loops[-2]):
        fill = sch.decompose_padding(pad, loops[-2])
        vectorize_innermost(sch, fill)
    vectorize_innermost(sch, pad)
