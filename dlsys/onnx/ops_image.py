"""ONNX's image resampling (Resize, Upsample) as dlsys graph nodes (see ``ops``).

Resize (opsets 11 and later; an older model's Resize or Upsample reaches it converted by
ONNX's version converter, see ``reader.upgrade_opset``) becomes one ``resize_op`` over the
input's trailing axes from the first one resized: nearest (every ``nearest_mode``) or
linear (bilinear on an NCHW image), with the coordinate modes of ``dlsys.ops.resize``. The
scales or sizes must be fixed when the graph is built (constants, or computed from shapes
dlsys knows); cubic interpolation, tf_crop_and_resize and a downsampling antialias are
refused naming the node.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter, show_dims
from dlsys.ops.placeholder import Parameter
from dlsys.ops.resize import COORDINATES, NEAREST_MODES, resize_op, resize_reference

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
    if mode not in ("nearest", "linear"):
        raise ctx.refuse(f"mode {mode!r} is not supported; dlsys resizes with 'nearest' or "
                         f"'linear'")
    coordinate = _choice(ctx, "coordinate_transformation_mode", "half_pixel", COORDINATES)
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
    if ctx.attr("antialias", 0) and mode == "linear" and min(factor) < 1.0:
        raise ctx.refuse("antialias when downsampling is not supported")
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


def _known(ctx: Context, dims, axis: int) -> int:
    if dims[axis] is None:
        raise ctx.refuse(f"axis {axis} is resized and its size must be known when the graph "
                         f"is built; the input is {show_dims(dims)}")
    return dims[axis]
