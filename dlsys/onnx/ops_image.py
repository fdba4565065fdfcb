"""ONNX's image resampling (Resize, Upsample, GridSample) and image layout operators
(AffineGrid, CenterCropPad, Col2Im, MaxUnpool) as dlsys graph nodes (see ``ops``).

Resize (opsets 11 and later; an older model's Resize or Upsample reaches it converted by
ONNX's version converter, see ``reader.upgrade_opset``) becomes one ``resize_op`` over the
input's trailing axes from the first one resized: nearest (every ``nearest_mode``) or
linear (bilinear on an NCHW image), with the coordinate modes of ``dlsys.ops.resize``. The
scales or sizes must be fixed when the graph is built (constants, or computed from shapes
dlsys knows).

Cubic interpolation, a downsampling antialias and tf_crop_and_resize are resampled one axis
at a time by matrix products instead (``resample_by_matrices``): each axis's (out, in) matrix of
weights is computed here in float64 and multiplied in by ``matmul_op``, which has a
gradient. Their cost grows with in * out per axis, against the resize kernel's few taps per
output, which keeps the common modes on ``resize_op``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter, show_dims
from dlsys.ops import matmul_op
from dlsys.ops.activations import where_op
from dlsys.ops.grid_sample import PADDINGS, grid_sample_op
from dlsys.ops.pad import pad_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reshape import reshape_op
from dlsys.ops.resize import COORDINATES, NEAREST_MODES, resize_op, resize_reference
from dlsys.ops.slicing import slice_op

_POLICIES = ("stretch", "not_larger", "not_smaller")


def _constant(ctx: Context, i: int, value, what: str) -> np.ndarray | None:
    """Input ``i`` (scales or sizes) as a flat numpy array, None where omitted or empty. A
    float Constant node of several numbers reaches a converter as a parameter holding
    them: its value is read (it is never trained)."""
    if value is None:
        return None
    if isinstance(value, Parameter):
        value = value.data.numpy()
    elif isinstance(value, Node):
        raise ctx.refuse(f"{what} (input {i}, {ctx.node.input[i]!r}) must be fixed when the "
                         f"graph is built: a constant, or computed from shapes dlsys knows")
    array = np.asarray(value).reshape(-1)
    return array if array.size else None


def _choice(ctx: Context, name: str, default: str, allowed) -> str:
    value = ctx.attr(name, default)
    if value not in allowed:
        raise ctx.refuse(f"{name} {value!r} is not supported; dlsys takes "
                         f"{', '.join(allowed)}")
    return value


@converter("Resize", attrs=("mode", "coordinate_transformation_mode", "nearest_mode",
                            "cubic_coeff_a", "exclude_outside", "extrapolation_value",
                            "antialias", "axes", "keep_aspect_ratio_policy"),
           constant_inputs=(1, 2, 3))
def resize(ctx, x, roi=None, scales=None, sizes=None):
    # (exclude_outside changes only the cubic's weights, and extrapolation_value only
    # tf_crop_and_resize's: for the modes taken, the edge is read either way.)
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.refuse(f"mode {mode!r} is not supported; dlsys resizes with 'nearest', "
                         f"'linear' or 'cubic'")
    coordinate = _choice(ctx, "coordinate_transformation_mode", "half_pixel",
                         (*COORDINATES, CROP))
    nearest = _choice(ctx, "nearest_mode", "round_prefer_floor", NEAREST_MODES)
    policy = _choice(ctx, "keep_aspect_ratio_policy", "stretch", _POLICIES)
    dims = ctx.input_dims(0, x)
    if dims is None:
        raise ctx.refuse("the input's rank is unknown")
    rank = len(dims)
    axes = [int(a) for a in ctx.attr("axes", range(rank))]
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise ctx.refuse(f"axes {axes} must name distinct axes of rank {rank}")
    axes = [a % rank for a in axes]
    scale_values = _constant(ctx, 2, scales, "scales")
    size_values = _constant(ctx, 3, sizes, "sizes")
    if (scale_values is None) == (size_values is None):
        raise ctx.refuse("exactly one of scales and sizes must be given")
    given = scale_values if size_values is None else size_values
    if given.size != len(axes):
        raise ctx.refuse(f"{'scales' if size_values is None else 'sizes'} "
                         f"{given.tolist()} must hold one value per resized axis, "
                         f"{len(axes)} for axes {axes}")
    out, factor = _sizes_and_scales(ctx, dims, axes, scale_values, size_values, policy)
    antialias = bool(ctx.attr("antialias", 0)) and mode != "nearest" and min(factor) < 1.0
    if mode == "cubic" or antialias or coordinate == CROP:
        options = Resampling(mode, coordinate, nearest, float(ctx.attr("cubic_coeff_a", -0.75)),
                             bool(ctx.attr("exclude_outside", 0)), antialias,
                             float(ctx.attr("extrapolation_value", 0.0)))
        roi_values = _constant(ctx, 1, roi, "roi") if coordinate == CROP else None
        return resample_by_matrices(ctx, x, dims, axes, out, factor, options,
                                    _roi_per_axis(ctx, roi_values, axes, rank))
    resized = [d for d in range(rank) if factor[d] != 1.0 or out[d] != dims[d]]
    if not resized:
        return x
    first = resized[0]
    unknown = [d for d in range(first, rank) if dims[d] is None]
    if unknown:
        raise ctx.refuse(f"the input's axes from {first} on are resized and must be of sizes "
                         f"known when the graph is built; the input is {show_dims(dims)}")
    if isinstance(x, np.ndarray):  # a constant image: resized now
        return resize_reference(x.shape[first:], out[first:], factor[first:], mode,
                                coordinate, nearest, x)
    return resize_op(ctx.node_input(0, x), tuple(out[first:]), tuple(factor[first:]), mode,
                     coordinate, nearest)


def _sizes_and_scales(ctx: Context, dims, axes: list[int], scales, sizes,
                      policy: str) -> tuple[list, list[float]]:
    """The output's size and the scale of every axis (an axis not in ``axes`` keeps its
    size, at scale 1), from the scales given or from the sizes and the aspect policy, as
    ONNX's reference computes them."""
    out, factor = list(dims), [1.0] * len(dims)
    if scales is not None:
        if not np.issubdtype(scales.dtype, np.floating) or not all(
                math.isfinite(s) and s > 0 for s in scales.tolist()):
            raise ctx.refuse(f"scales {scales.tolist()} must be positive numbers")
        for axis, scale in zip(axes, scales.tolist()):
            factor[axis] = float(scale)
            if scale != 1.0:
                out[axis] = math.floor(_known(ctx, dims, axis) * float(scale))
                if out[axis] < 1:
                    raise ctx.refuse(f"scale {scale} leaves axis {axis} of size "
                                     f"{dims[axis]} empty")
        return out, factor
    if not np.issubdtype(sizes.dtype, np.integer) or (sizes <= 0).any():
        raise ctx.refuse(f"sizes {sizes.tolist()} must be positive integers")
    wanted = dict(zip(axes, (int(n) for n in sizes.tolist())))
    if policy != "stretch":
        ratios = [wanted[a] / _known(ctx, dims, a) for a in axes]
        common = min(ratios) if policy == "not_larger" else max(ratios)
        # Rounded half up, as the reference rounds the kept aspect's sizes.
        wanted = {a: int(common * dims[a] + 0.5) for a in axes}
        for a in axes:
            factor[a] = common
    for axis, size in wanted.items():
        out[axis] = size
        if policy == "stretch" and size != dims[axis]:
            factor[axis] = size / _known(ctx, dims, axis)
    return out, factor


def _roi_per_axis(ctx: Context, roi, axes: list[int], rank: int) -> dict[int, tuple]:
    """tf_crop_and_resize's region of each resized axis, (start, end) as fractions of it."""
    if roi is None:
        if ctx.attr("coordinate_transformation_mode") == CROP:
            raise ctx.refuse("tf_crop_and_resize needs the roi input")
        return {}
    if roi.size != 2 * len(axes):
        raise ctx.refuse(f"roi {roi.tolist()} must hold a start and an end for each of the "
                         f"{len(axes)} resized axes")
    return {axis: (float(roi[i]), float(roi[len(axes) + i])) for i, axis in enumerate(axes)}


def _known(ctx: Context, dims, axis: int) -> int:
    if dims[axis] is None:
        raise ctx.refuse(f"axis {axis} is resized and its size must be known when the graph "
                         f"is built; the input is {show_dims(dims)}")
    return dims[axis]


# ------------------------------------------------------------ resampling by matrices
CROP = "tf_crop_and_resize"
# How far each side of a sample the interpolation kernel reaches, in input elements.
_SUPPORT = {"linear": 1, "cubic": 2}


@dataclass(frozen=True)
class Resampling:
    """The options of a resize computed with weight matrices (see the module docstring)."""

    mode: str
    coordinate: str
    nearest: str
    cubic_a: float
    exclude_outside: bool
    antialias: bool
    extrapolation: float


def _sources(size: int, out: int, scale: float, coordinate: str, roi) -> np.ndarray:
    """The input coordinate each output index of an axis samples (ONNX's transformations)."""
    i = np.arange(out, dtype=np.float64)
    stretched = scale * size  # the output's size before rounding down
    if coordinate == "asymmetric":
        return i / scale
    if coordinate == "align_corners":
        return np.zeros(out) if stretched == 1 else i * (size - 1) / (stretched - 1)
    if coordinate == CROP:
        start, end = roi
        if stretched == 1:
            return np.full(out, (end - start) * (size - 1) / 2 + start * (size - 1))
        return i * (end - start) * (size - 1) / (stretched - 1) + start * (size - 1)
    if coordinate == "pytorch_half_pixel" and stretched == 1:
        return np.full(out, -0.5)
    if coordinate == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    x = (i + 0.5) / scale - 0.5
    if coordinate == "half_pixel_symmetric":
        x = x + size / 2 * (1 - out / stretched)
    return x


def _kernel(options: Resampling, t: np.ndarray) -> np.ndarray:
    """The interpolation weight at distance ``t`` from the sample: a triangle (linear) or
    Keys' cubic with coefficient ``a``."""
    t = np.abs(t)
    if options.mode == "linear":
        return np.clip(1 - t, 0, None)
    a = options.cubic_a
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def axis_weights(size: int, out: int, scale: float, options: Resampling,
                 roi=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The (out, size) weights of one resized axis, and for tf_crop_and_resize which
    outputs fall outside the input (they take the extrapolation value), else None."""
    x = _sources(size, out, scale, options.coordinate, roi)
    outside = ((x < 0) | (x > size - 1)) if options.coordinate == CROP else None
    matrix = np.zeros((out, size))
    rows = np.arange(out)
    if options.mode == "nearest":
        rounded = {"round_prefer_floor": np.ceil(x - 0.5), "round_prefer_ceil":
                   np.floor(x + 0.5), "floor": np.floor(x), "ceil": np.ceil(x)}[options.nearest]
        matrix[rows, np.clip(rounded.astype(np.int64), 0, size - 1)] = 1.0
        return matrix, outside
    # Downsampling with antialias widens the kernel by 1 / scale (and lowers it alike).
    stretch = min(scale, 1.0) if options.antialias else 1.0
    reach = _SUPPORT[options.mode]
    taps = 2 * reach if stretch == 1.0 else 2 - 2 * (math.floor(-reach / stretch) + 1)
    # The taps nearest the sample, ties to the lower index: from ceil(x) - taps / 2 on.
    first = np.ceil(x).astype(np.int64) - taps // 2
    index = first[:, None] + np.arange(taps)[None, :]
    weights = _kernel(options, stretch * (index - x[:, None]))
    if options.antialias:
        weights = weights / weights.sum(axis=1, keepdims=True)
    if options.exclude_outside:
        weights = np.where((index < 0) | (index >= size), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    # Taps past either end read the edge element, as ONNX pads with the edge.
    np.add.at(matrix, (np.repeat(rows, taps), np.clip(index, 0, size - 1).reshape(-1)),
              weights.reshape(-1))
    return matrix, outside


def resample_by_matrices(ctx: Context, x, dims, axes: list[int], out: list,
                         factor: list[float], options: Resampling, roi: dict):
    """``x`` resized along ``axes`` (in that order), each by one product with its axis's
    weights; tf_crop_and_resize's outside outputs set to the extrapolation value."""
    dims, given = list(dims), x.dtype if isinstance(x, np.ndarray) else None
    for axis in axes:
        region = roi.get(axis)
        if factor[axis] == 1.0 and out[axis] == dims[axis] and region in (None, (0.0, 1.0)):
            continue  # this axis is unchanged
        size = _known(ctx, dims, axis)
        if any(d is None for d in dims[axis + 1:]):
            raise ctx.refuse(f"the axes after {axis} must be of sizes known when the graph "
                             f"is built; the input is {show_dims(dims)}")
        matrix, outside = axis_weights(size, out[axis], factor[axis], options, region)
        x = apply_along_axis(ctx, x, dims, axis, matrix)
        dims[axis] = out[axis]
        if outside is not None and outside.any():
            keep_shape = (out[axis],) + (1,) * (len(dims) - axis - 1)
            if isinstance(x, np.ndarray):
                x = np.where(outside.reshape(keep_shape), options.extrapolation, x)
            else:
                x = where_op(_weights(ctx, outside.reshape(keep_shape), f"outside{axis}"),
                             _weights(ctx, np.full(1, options.extrapolation), "extrapolation"),
                             x)
    return x.astype(given) if isinstance(x, np.ndarray) else x


def _weights(ctx: Context, array: np.ndarray, what: str) -> Node:
    """A table the converter computed, as a graph value the model does not train."""
    dtype = getattr(ctx, "compute_dtype", "float32")
    return Parameter(np.ascontiguousarray(array, dtype), f"{ctx.node.output[0]}:{what}")


def apply_along_axis(ctx: Context, x, dims: list, axis: int, matrix: np.ndarray):
    """``matrix`` (out, size) applied along ``axis`` of ``x``."""
    if isinstance(x, np.ndarray):
        return np.moveaxis(np.tensordot(matrix, x, axes=(1, axis)), 0, axis)
    if axis == len(dims) - 1:
        return matmul_op(x, _weights(ctx, matrix.T, f"axis{axis}"))
    # (before, size, after) with the matrix applied to the middle axis of each block.
    after = math.prod(dims[axis + 1:])
    before = None if None in dims[:axis] else math.prod(dims[:axis])
    blocks = reshape_op(x, (-1 if before is None else before, dims[axis], after))
    product = matmul_op(_weights(ctx, matrix, f"axis{axis}"), blocks)
    shape = [-1 if d is None else d for d in dims]
    shape[axis] = matrix.shape[0]
    return reshape_op(product, tuple(shape))


# ------------------------------------------------------------ grids, crops, folds
@converter("AffineGrid", attrs=("align_corners",), constant_inputs=(1,))
def affine_grid(ctx, theta, size):
    """The sampling grid of ``theta`` (N, 2, 3) or (N, 3, 4) over an output of ``size``
    (N, C, H, W) or (N, C, D, H, W): each position (x along W, y along H, z along D, in
    [-1, 1]) times theta, one matrix product with a constant grid of positions."""
    size = np.asarray(size).reshape(-1).astype(np.int64)
    if size.size not in (4, 5) or (size < 1).any():
        raise ctx.refuse(f"size {size.tolist()} must be (N, C, H, W) or (N, C, D, H, W)")
    spatial = [int(n) for n in size[2:]]
    corners = bool(ctx.attr("align_corners", 0))

    def positions(n: int) -> np.ndarray:
        if corners:
            return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
        return (2 * np.arange(n) + 1) / n - 1

    axes = np.meshgrid(*[positions(n) for n in spatial], indexing="ij")
    # Coordinates are listed x first: the last spatial axis (W) is x.
    base = np.stack([*reversed(axes), np.ones(spatial)], axis=-1).reshape(-1,
                                                                         len(spatial) + 1)
    if isinstance(theta, np.ndarray):
        grid = np.einsum("pk,nck->npc", base, theta)
        return grid.reshape(theta.shape[0], *spatial, len(spatial)).astype(theta.dtype)
    dims = ctx.input_dims(0, theta)
    if dims is None or tuple(dims[1:]) != (len(spatial), len(spatial) + 1):
        raise ctx.refuse(f"theta has shape {show_dims(dims)}; a size of {len(spatial)} "
                         f"spatial axes needs (N, {len(spatial)}, {len(spatial) + 1})")
    grid = matmul_op(_weights(ctx, base, "positions"), theta, False, True)
    return reshape_op(grid, (-1, *spatial, len(spatial)))


@converter("CenterCropPad", attrs=("axes",), constant_inputs=(1,))
def center_crop_pad(ctx, x, shape):
    """Each of ``axes`` cut to the centred window of its target size, or padded with zeros
    around it (the odd element after the input, in either case)."""
    dims = x.shape if isinstance(x, np.ndarray) else ctx.input_dims(0, x)
    if dims is None:
        raise ctx.refuse("the input's rank is unknown")
    rank = len(dims)
    axes = [int(a) for a in ctx.attr("axes", range(rank))]
    target = np.asarray(shape).reshape(-1).astype(np.int64)
    if target.size != len(axes) or any(not -rank <= a < rank for a in axes) or \
            (target < 1).any():
        raise ctx.refuse(f"shape {target.tolist()} must hold a positive size for each of "
                         f"axes {axes}")
    pads = [(0, 0)] * rank
    for axis, size in zip((a % rank for a in axes), target.tolist()):
        have = _known(ctx, dims, axis)
        if have > size:
            start = (have - size) // 2
            x = x[(slice(None),) * axis + (slice(start, start + size),)] \
                if isinstance(x, np.ndarray) else slice_op(x, axis, start, start + size)
        elif have < size:
            pads[axis] = ((size - have) // 2, size - have - (size - have) // 2)
    if all(p == (0, 0) for p in pads):
        return x
    return np.pad(x, pads) if isinstance(x, np.ndarray) else pad_op(x, pads)


@converter("Col2Im", attrs=("dilations", "pads", "strides"), constant_inputs=(1, 2))
def col2im(ctx, x, image_shape, block_shape):
    """The blocks of ``x`` (N, C * prod(block), L) added back into an image (N, C, *image),
    as PyTorch's ``fold``: one product with a constant 0/1 matrix from (block, location) to
    pixel, whose transpose is the gradient."""
    image = [int(n) for n in np.asarray(image_shape).reshape(-1)]
    block = [int(n) for n in np.asarray(block_shape).reshape(-1)]
    spatial = len(image)
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    dilations = [int(d) for d in ctx.attr("dilations", [1] * spatial)]
    pads = [int(p) for p in ctx.attr("pads", [0] * 2 * spatial)]
    grid = [(n + pads[i] + pads[spatial + i] - dilations[i] * (block[i] - 1) - 1)
            // strides[i] + 1 for i, n in enumerate(image)]
    dims = x.shape if isinstance(x, np.ndarray) else ctx.input_dims(0, x)
    blocks, locations = math.prod(block), math.prod(grid)
    if len(block) != spatial or dims is None or len(dims) != 3 or dims[1] is None or \
            dims[1] % blocks or dims[2] != locations or min(grid) < 1:
        raise ctx.refuse(f"an input of shape {show_dims(dims)} does not fold into image "
                         f"{image} with blocks {block} ({locations} locations)")
    # Pixel of (block offset k, location l) along each axis: l * stride - pad + k * dilation.
    offsets = np.indices(block).reshape(spatial, -1)
    places = np.indices(grid).reshape(spatial, -1)
    pixel = (places[:, None, :] * np.asarray(strides)[:, None, None]
             - np.asarray(pads[:spatial])[:, None, None]
             + offsets[:, :, None] * np.asarray(dilations)[:, None, None])
    inside = np.all((pixel >= 0) & (pixel < np.asarray(image)[:, None, None]), axis=0)
    fold = np.zeros((blocks * locations, math.prod(image)))
    rows = np.flatnonzero(inside)
    fold[rows, np.ravel_multi_index(tuple(p.reshape(-1)[rows] for p in pixel), image)] = 1.0
    channels = dims[1] // blocks
    if isinstance(x, np.ndarray):
        out = x.reshape(x.shape[0], channels, -1) @ fold
        return out.reshape(x.shape[0], channels, *image).astype(x.dtype)
    columns = reshape_op(x, (-1, channels, blocks * locations))
    return reshape_op(matmul_op(columns, _weights(ctx, fold, "fold")), (-1, channels, *image))


@converter("MaxUnpool", attrs=("kernel_shape", "pads", "strides"), constant_inputs=(1, 2))
def max_unpool(ctx, x, indices, output_shape=None):
    """Zeros of the unpooled shape with each value of ``x`` put back at its index (a
    position in the whole output, as MaxPool's second output counts it); the indices are
    constants, so the values move by a take."""
    from dlsys.onnx.ops_misc import scatter_positions

    dims = x.shape if isinstance(x, np.ndarray) else ctx.input_dims(0, x)
    if dims is not None and None in dims:
        dims = ctx.fixed_shapes().get(ctx.node.input[0], dims)
    if dims is None or None in dims or len(dims) < 3:
        raise ctx.refuse(f"the input has shape {show_dims(dims)}; dlsys needs all its sizes")
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    spatial = len(dims) - 2
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    pads = [int(p) for p in ctx.attr("pads", [0] * 2 * spatial)]
    out = [*dims[:2], *((n - 1) * strides[i] + kernel[i] - pads[i] - pads[spatial + i]
                        for i, n in enumerate(dims[2:]))]
    # An output_shape given places the unpooled tensor at its start, zeros after it.
    given = out if output_shape is None else \
        [int(n) for n in np.asarray(output_shape).reshape(-1)]
    if len(given) != len(out) or any(g < n for g, n in zip(given, out)):
        raise ctx.refuse(f"output_shape {given} must be at least the unpooled shape {out}")
    if not isinstance(indices, np.ndarray):
        raise ctx.refuse("the indices must be a constant (an initializer or an input fed "
                         "per run); dlsys fixes where each value goes when it builds the graph")
    targets = indices.astype(np.int64).reshape(-1)
    if len(out) != len(dims) or targets.size != math.prod(dims) or \
            np.any((targets < 0) | (targets >= math.prod(out))):
        raise ctx.refuse(f"indices of shape {indices.shape} do not place an input of shape "
                         f"{show_dims(dims)} into an output of shape {out}")
    zeros = np.zeros(out, dtype=x.dtype if isinstance(x, np.ndarray) else np.float32)
    y = scatter_positions(ctx, zeros, x, targets, tuple(out))
    if given == out:
        return y
    widths = [(0, g - n) for g, n in zip(given, out)]
    return np.pad(y, widths) if isinstance(y, np.ndarray) else pad_op(y, widths)


# Opset 16 named the modes as PyTorch does; opset 20 renamed them.
_GRID_MODES = {"bilinear": "linear", "bicubic": "cubic", "linear": "linear",
               "cubic": "cubic", "nearest": "nearest"}


@converter("GridSample", attrs=("align_corners", "mode", "padding_mode"))
def grid_sample(ctx, x, grid):
    """The image sampled at the grid's positions: ``grid_sample_op``, with its gradients
    to both inputs."""
    mode = _GRID_MODES.get(ctx.attr("mode", "linear"))
    padding = ctx.attr("padding_mode", "zeros")
    if mode is None or padding not in PADDINGS:
        raise ctx.refuse(f"mode {ctx.attr('mode')!r} and padding_mode {padding!r}: dlsys "
                         f"samples with {sorted(_GRID_MODES)} and pads with {PADDINGS}")
    return grid_sample_op(_as_graph_value(ctx, x, "image"), _as_graph_value(ctx, grid, "grid"),
                          mode, padding, bool(ctx.attr("align_corners", 0)))


def _as_graph_value(ctx: Context, value, what: str) -> Node:
    return _weights(ctx, value, what) if isinstance(value, np.ndarray) else value
