"""Sampling an image at the positions of a grid (ONNX's GridSample, PyTorch's
``grid_sample``) and the two adjoints: to the image (a scatter-add, written as its own
loops) and to the grid (a sum over the channels of each position's slope).

The image is (N, C, *spatial) with 2 or 3 spatial axes; the grid (N, *out, d) holds, per
output position, coordinates in [-1, 1], x (the last spatial axis) first. Each spatial axis
turns its coordinate into a position ``u`` of the input (``denormalize``), rounds it for
``nearest``, brings an outside ``u`` back by the padding mode, and reads taps around it:
one (nearest), two (linear) or four (cubic, Keys' coefficient -0.75) per axis, weighted by
``u``'s fraction; a tap outside the input reads 0 (zeros), the edge (border) or its
reflection. The output is the sum over the taps' combinations of the weights' product times
the pixel, in float32 arithmetic as ONNX's reference computes it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape

CUBIC_A = -0.75
# One tap of one axis: (index into the input, valid, weight, d weight / d coordinate),
# each a TIR expression.
Tap = tuple


def _const(value: float, dtype: str) -> tirx.PrimExpr:
    return tirx.const(float(value), dtype)


def _range(size: int, align: bool) -> tuple[float, float]:
    """The coordinates an axis covers: its pixels' centres (aligned corners) or edges."""
    return (0.0, size - 1.0) if align else (-0.5, size - 0.5)


def _reflect(u: tirx.PrimExpr, low: float, high: float, dtype: str):
    """``u`` reflected at the range's ends until inside it, and d(result)/du (+-1)."""
    span = high - low
    if span == 0:
        return _const(low, dtype), _const(0.0, dtype)

    def fold(distance, near: float, far: float, toward: float):
        count = tirx.floor(distance / _const(span, dtype))
        rest = distance - count * _const(span, dtype)
        even = tirx.floormod(count.astype("int32"), 2) == 0
        return (tirx.Select(even, _const(near, dtype) + toward * rest,
                            _const(far, dtype) - toward * rest),
                tirx.Select(even, _const(-1.0, dtype), _const(1.0, dtype)))

    below, below_slope = fold(_const(low, dtype) - u, low, high, 1.0)
    above, above_slope = fold(u - _const(high, dtype), high, low, -1.0)
    value = tirx.Select(u < _const(low, dtype), below,
                        tirx.Select(u > _const(high, dtype), above, u))
    slope = tirx.Select(u < _const(low, dtype), below_slope,
                        tirx.Select(u > _const(high, dtype), above_slope, _const(1.0, dtype)))
    return value, slope


def _cubic(t: tirx.PrimExpr, dtype: str) -> list[tuple[tirx.PrimExpr, tirx.PrimExpr]]:
    """Keys' four weights at fraction ``t`` (taps -1, 0, 1, 2) and their derivatives."""
    a = _const(CUBIC_A, dtype)
    one, two = _const(1.0, dtype), _const(2.0, dtype)

    def far(s):  # 1 < s < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a, (3 * a * s - 10 * a) * s + 8 * a

    def near(s):  # s <= 1
        return ((a + 2) * s - (a + 3)) * s * s + one, (3 * (a + 2) * s - 2 * (a + 3)) * s

    w0, d0 = far(t + one)
    w1, d1 = near(t)
    w2, d2 = near(one - t)
    w3, d3 = far(two - t)
    # The last two are functions of (1 - t), (2 - t): their slopes change sign.
    return [(w0, d0), (w1, d1), (w2, -d2), (w3, -d3)]


def axis_taps(coordinate: tirx.PrimExpr, size: int, mode: str, padding: str, align: bool,
              dtype: str) -> list[Tap]:
    """The taps one spatial axis reads for a grid coordinate (see the module docstring);
    each slope is d weight / d coordinate, the padding's and denormalisation's chain
    included."""
    scale = (size - 1) / 2.0 if align else size / 2.0
    u = (coordinate + _const(1.0, dtype)) * _const(scale, dtype) \
        - _const(0.0 if align else 0.5, dtype)
    slope = _const(scale, dtype)
    low, high = _range(size, align)
    if mode == "nearest":
        u = tirx.nearbyint(u)  # half to even, as numpy's rint
    outside = tirx.Or(u < _const(low, dtype), u > _const(high, dtype))
    if padding == "border":
        clamped = tirx.max(tirx.min(u, _const(size - 1.0, dtype)), _const(0.0, dtype))
        slope = tirx.Select(outside, _const(0.0, dtype), slope)
        u = tirx.Select(outside, clamped, u)
    elif padding == "reflection":
        reflected, turn = _reflect(u, low, high, dtype)
        slope = slope * turn
        u = reflected
    if mode == "nearest":
        return [(_tap_index(u.astype("int32"), size, padding, align, dtype),
                 _valid(u.astype("int32"), size, padding), _const(1.0, dtype),
                 _const(0.0, dtype))]
    base = tirx.floor(u)
    t = u - base
    start = base.astype("int32")
    if mode == "linear":
        weights = [(_const(1.0, dtype) - t, _const(-1.0, dtype)), (t, _const(1.0, dtype))]
        offsets = [0, 1]
    else:
        weights, offsets = _cubic(t, dtype), [-1, 0, 1, 2]
    return [(_tap_index(start + k, size, padding, align, dtype), _valid(start + k, size,
                                                                        padding),
             w, dw * slope) for k, (w, dw) in zip(offsets, weights)]


def _valid(index: tirx.PrimExpr, size: int, padding: str) -> tirx.PrimExpr:
    """Whether a tap reads the input (zeros padding reads 0 outside it)."""
    if padding != "zeros":
        return tirx.const(True, "bool")
    return tirx.And(index >= 0, index < size)


def _tap_index(index: tirx.PrimExpr, size: int, padding: str, align: bool,
               dtype: str) -> tirx.PrimExpr:
    """The input index a tap reads: clamped (border; zeros, whose outside taps read 0),
    or reflected into the axis' range and truncated (reflection)."""
    if padding == "reflection":
        low, high = _range(size, align)
        reflected, _ = _reflect(index.astype(dtype), low, high, dtype)
        index = reflected.astype("int32")
    return tirx.max(tirx.min(index, size - 1), 0)


def _combinations(grid_at: Callable, n, position, spatial: Shape, options: tuple, dtype: str):
    """Per spatial axis, its taps for output ``position`` of batch entry ``n``."""
    mode, padding, align = options
    rank = len(spatial)
    return [axis_taps(grid_at(n, position, rank - 1 - axis), size, mode, padding, align,
                      dtype) for axis, size in enumerate(spatial)]


def grid_sample(x_shape: Shape, grid_shape: Shape, mode: str, padding: str, align: bool,
                dtype: str):
    """``Y[n, c, *p]``: the image sampled at grid position ``grid[n, *p]``."""
    x = te.placeholder(x_shape, dtype=dtype, name="X")
    grid = te.placeholder(grid_shape, dtype=dtype, name="grid")
    spatial = tuple(x_shape[2:])
    out_shape = (x_shape[0], x_shape[1], *grid_shape[1:-1])

    def value(n, c, *position):
        taps = _combinations(lambda b, p, k: grid[(b, *p, k)], n, position, spatial,
                             (mode, padding, align), dtype)
        total = _const(0.0, dtype)
        for combo in itertools.product(*taps):
            weight = math.prod((w for _, _, w, _ in combo), start=_const(1.0, dtype))
            valid = tirx.all(*[v for _, v, _, _ in combo]) if len(combo) > 1 else combo[0][1]
            pixel = x[(n, c, *[i for i, _, _, _ in combo])]
            total = total + tirx.Select(valid, weight * pixel, _const(0.0, dtype))
        return total

    out = te.compute(out_shape, value, name="grid_sample")
    return [x, grid], [out]


def grid_sample_grid_gradient(x_shape: Shape, grid_shape: Shape, mode: str, padding: str,
                              align: bool, dtype: str):
    """``dgrid[n, *p, k]``: the sum over channels of the output gradient times the
    output's slope along grid coordinate k (0 for nearest, whose output is piecewise
    constant)."""
    grad = te.placeholder((x_shape[0], x_shape[1], *grid_shape[1:-1]), dtype=dtype, name="G")
    x = te.placeholder(x_shape, dtype=dtype, name="X")
    grid = te.placeholder(grid_shape, dtype=dtype, name="grid")
    spatial = tuple(x_shape[2:])
    rank = len(spatial)
    channel = te.reduce_axis((0, x_shape[1]), name="c")

    def slope(n, *rest):
        *position, k = rest
        axis_of = [rank - 1 - component for component in range(rank)]
        taps = _combinations(lambda b, p, j: grid[(b, *p, j)], n, position, spatial,
                             (mode, padding, align), dtype)
        terms = []
        for component in range(rank):
            along = axis_of[component]
            total = _const(0.0, dtype)
            for combo in itertools.product(*taps):
                factor = _const(1.0, dtype)
                for axis, (_, _, w, dw) in enumerate(combo):
                    factor = factor * (dw if axis == along else w)
                valid = tirx.all(*[v for _, v, _, _ in combo])
                pixel = x[(n, channel, *[i for i, _, _, _ in combo])]
                total = total + tirx.Select(valid, factor * pixel, _const(0.0, dtype))
            terms.append(total)
        chosen = terms[-1]
        for component in range(rank - 2, -1, -1):
            chosen = tirx.Select(k == component, terms[component], chosen)
        return te.sum(grad[(n, channel, *position)] * chosen, axis=channel)

    out = te.compute(grid_shape, slope, name="grid_sample_grid_gradient")
    return [grad, x, grid], [out]


def grid_sample_input_gradient(x_shape: Shape, grid_shape: Shape, mode: str, padding: str,
                               align: bool, dtype: str):
    """``dX``: each output gradient added into the pixels its taps read, times their
    weights. Each (n, c) image is one task that walks the output positions in order, so the
    sums are the same at every run."""
    out_spatial = tuple(grid_shape[1:-1])
    grad = te.placeholder((x_shape[0], x_shape[1], *out_spatial), dtype=dtype, name="G")
    grid = te.placeholder(grid_shape, dtype=dtype, name="grid")
    spatial = tuple(x_shape[2:])
    batch, channels = x_shape[:2]
    positions, pixels = math.prod(out_spatial), math.prod(spatial)

    def unravel(flat, shape):
        index = []
        for extent in reversed(shape):
            index.append(flat % extent)
            flat = flat // extent
        return index[::-1]

    def loop(name, extent, body, kind=tirx.ForKind.SERIAL):
        var = tirx.Var(name, "int32")
        return tirx.For(var, tirx.const(0, "int32"), tirx.const(extent, "int32"), kind,
                        body(var))

    def body(ins, outs):
        g, grid_buffer = ins
        (out,) = outs

        def zero(image, pixel):
            return tirx.BufferStore(out, _const(0.0, dtype),
                                    [image // channels, image % channels,
                                     *unravel(pixel, spatial)])

        def scatter(image, flat):
            n, c = image // channels, image % channels
            position = unravel(flat, out_spatial)
            taps = _combinations(lambda b, p, k: grid_buffer[(b, *p, k)], n, position,
                                 spatial, (mode, padding, align), dtype)
            stores = []
            for combo in itertools.product(*taps):
                weight = math.prod((w for _, _, w, _ in combo), start=_const(1.0, dtype))
                valid = tirx.all(*[v for _, v, _, _ in combo])
                where = [n, c, *[i for i, _, _, _ in combo]]
                stores.append(tirx.IfThenElse(valid, tirx.BufferStore(
                    out, out[where] + weight * g[(n, c, *position)], where), None))
            return tirx.SeqStmt(stores) if len(stores) > 1 else stores[0]

        return loop("image", batch * channels, lambda image: tirx.SeqStmt([
            loop("pixel", pixels, lambda pixel: zero(image, pixel)),
            loop("position", positions, lambda flat: scatter(image, flat))]),
            tirx.ForKind.PARALLEL)

    out = te.extern([x_shape], [grad, grid], body, name="grid_sample_input_gradient",
                    dtype=dtype)
    return [grad, grid], [out]
