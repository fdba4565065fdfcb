"""ONNX's convolutions, pooling and batch norm as dlsys graph nodes (see ``ops``).

Windows are 2-d over NCHW images, or 1-d over (N, C, L) lines taken as images of one row
(reshapes, which are views). Every padding ONNX writes (``pads`` with each side its own,
``auto_pad`` worked out from the static image size) becomes the operators' start and end
padding, so no node pads a copy of its input.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlsys.onnx.bounds import SPATIAL, SPATIAL_PAIRS
from dlsys.onnx.ops import Context, Dims, converter, reshape_target, show_dims
from dlsys.ops import (
    abs_op,
    avgpool2d_op,
    conv2d_op,
    global_avgpool_op,
    maxpool2d_op,
    pow_byconst_op,
    sqrt_op,
)
from dlsys.ops.conv_transpose import conv_transpose2d_op
from dlsys.ops.norm import batchnorm2d_op
from dlsys.ops.reshape import reshape_op, reshape_to_op

# ---------------------------------------------------------------- convolution
# A window's sizes run over the axes after (N, C) of its input.
_WINDOW_RANKS = {"kernel_shape": SPATIAL, "strides": SPATIAL, "dilations": SPATIAL,
                 "pads": SPATIAL_PAIRS}
_TRANSPOSE_RANKS = {**_WINDOW_RANKS, "output_padding": SPATIAL, "output_shape": SPATIAL}


@dataclass(frozen=True)
class Window:
    """A node's 2-d window: stride, dilation and the padding of each axis's start and end.
    ``line`` says it came from a 1-d window over (N, C, L), taken as (N, C, 1, L)."""

    stride: tuple[int, int]
    dilation: tuple[int, int]
    begin: tuple[int, int]
    end: tuple[int, int]
    line: bool


def _spatial(ctx: Context, name: str, default: int, rank: int) -> list[int]:
    value = ctx.attr(name)
    return [default] * rank if value is None else [int(v) for v in value]


def _window(ctx: Context, kernel: list[int], image: Dims | None) -> Window:
    """The window a Conv or pool node asks for, 1-d and 2-d; ``auto_pad`` SAME_UPPER and
    SAME_LOWER are worked out from the image's static size (``image``: the input's dims)."""
    rank = len(kernel)
    if rank not in (1, 2):
        raise ctx.refuse(f"only 1-d and 2-d windows are supported (kernel_shape {kernel})")
    strides = _spatial(ctx, "strides", 1, rank)
    dilations = _spatial(ctx, "dilations", 1, rank)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = _spatial(ctx, "pads", 0, 2 * rank)
        begin, end = pads[:rank], pads[rank:]
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = None if image is None else image[2:]
        if sizes is None or any(d is None for d in sizes):
            raise ctx.refuse(f"auto_pad={auto_pad!r} needs the image's size when the graph is "
                             f"built, got shape {show_dims(image)}")
        begin, end = [], []
        for size, k, st, d in zip(sizes, kernel, strides, dilations):
            # The output has ceil(size / stride) positions; the padding they need, split
            # with the odd one at the end (UPPER) or the start (LOWER).
            total = max(0, (-(-size // st) - 1) * st + (k - 1) * d + 1 - size)
            half = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(half)
            end.append(total - half)
    else:
        raise ctx.refuse(f"auto_pad={auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, "
                         f"SAME_LOWER")
    if any(p < 0 for p in begin + end):
        raise ctx.refuse(f"pads={begin + end} are negative")
    if rank == 1:  # a line is an image of one row
        return Window((1, strides[0]), (1, dilations[0]), (0, begin[0]), (0, end[0]), True)
    return Window(tuple(strides), tuple(dilations), tuple(begin), tuple(end), False)


def _as_image(ctx: Context, i: int, value, line: bool):
    """Input ``i`` as NCHW: a line (N, C, L) as (N, C, 1, L), a view."""
    value = ctx.node_input(i, value)
    if not line:
        return value
    dims = ctx.input_dims(i, value)
    if dims is None or len(dims) != 3 or dims[1] is None or dims[2] is None:
        raise ctx.refuse(f"a 1-d window needs an input (N, C, L) with C and L fixed when the "
                         f"graph is built, got shape {show_dims(dims)}")
    return reshape_op(value, (-1, dims[1], 1, dims[2]))


def _as_input_rank(ctx: Context, y, line: bool):
    """``y`` back as a line when the node's input was one."""
    if not line:
        return y
    return reshape_op(y, reshape_target(ctx, ctx.output_dims(0), "the output's shape"))


def _weight_dims(ctx: Context, w) -> Dims:
    dims = ctx.input_dims(1, w)
    if dims is None or len(dims) not in (3, 4) or any(d is None for d in dims):
        raise ctx.refuse(f"the weight must have a shape fixed by the file (O, C/group, k...) "
                         f"of a 1-d or 2-d window, got {show_dims(dims)}")
    kernel = ctx.attr("kernel_shape")
    if kernel is not None and tuple(kernel) != tuple(dims[2:]):
        raise ctx.refuse(f"kernel_shape {kernel} differs from the weight's {list(dims[2:])}")
    return dims


def _weight(ctx: Context, w, dims: Dims):
    w = ctx.node_input(1, w)
    return reshape_op(w, (dims[0], dims[1], 1, dims[2])) if len(dims) == 3 else w


def _group(ctx: Context, channels: int | None, per_group: int, filters: int) -> int:
    """The node's ``group``, checked against the input's channels and the filters."""
    group = int(ctx.attr("group", 1))
    if group < 1 or filters % group or (channels is not None and channels != per_group * group):
        raise ctx.refuse(f"group={group} does not fit {channels} input channels and filters "
                         f"of {per_group} channels ({filters} of them)")
    return group


def _add_bias(ctx: Context, y, b):
    # A (C, 1, 1) bias, which the fusion pass folds into the convolution's write-back.
    return y if b is None else y + reshape_op(ctx.node_input(2, b), (-1, 1, 1))


@converter("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
           ranked=_WINDOW_RANKS)
def conv(ctx, x, w, b=None):
    dims_w = _weight_dims(ctx, w)
    dims_x = ctx.input_dims(0, x)
    window = _window(ctx, list(dims_w[2:]), dims_x)
    group = _group(ctx, None if dims_x is None else dims_x[1], dims_w[1], dims_w[0])
    y = conv2d_op(_as_image(ctx, 0, x, window.line), _weight(ctx, w, dims_w), window.stride,
                  window.begin, window.dilation, group, padding_end=window.end)
    return _as_input_rank(ctx, _add_bias(ctx, y, b), window.line)


@converter("ConvTranspose", attrs=("auto_pad", "dilations", "group", "kernel_shape",
                                   "output_padding", "output_shape", "pads", "strides"),
           ranked=_TRANSPOSE_RANKS)
def conv_transpose(ctx, x, w, b=None):
    dims_w = _weight_dims(ctx, w)
    dims_x = ctx.input_dims(0, x)
    # The weight is (C_in, C_out / group, k...): its first axis splits into the groups.
    group = int(ctx.attr("group", 1))
    if group < 1 or dims_w[0] % group or (dims_x is not None and dims_x[1] not in (None,
                                                                                 dims_w[0])):
        raise ctx.refuse(f"group={group} does not fit {show_dims(dims_x)} images and a weight "
                         f"of shape {show_dims(dims_w)}")
    kernel = list(dims_w[2:])
    rank = len(kernel)
    extra = _spatial(ctx, "output_padding", 0, rank)
    output_shape, auto_pad = ctx.attr("output_shape"), ctx.attr("auto_pad", "NOTSET")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        window = _transpose_padding(ctx, kernel, extra, dims_x, output_shape, auto_pad)
    else:
        window = _window(ctx, kernel, dims_x)
    if window.line:
        extra = [0, *extra]
    y = conv_transpose2d_op(_as_image(ctx, 0, x, window.line), _weight(ctx, w, dims_w),
                            window.stride, window.begin, tuple(extra), window.dilation, group,
                            padding_end=window.end)
    return _as_input_rank(ctx, _add_bias(ctx, y, b), window.line)


def _transpose_padding(ctx: Context, kernel: list[int], extra: list[int], image: Dims | None,
                       output_shape, auto_pad: str) -> Window:
    """ConvTranspose's pads worked out from its ``output_shape`` (or, with auto_pad SAME_*,
    from the input's size times the stride), as ONNX's operator text gives them."""
    rank = len(kernel)
    sizes = None if image is None else image[2:]
    if sizes is None or any(d is None for d in sizes):
        raise ctx.refuse(f"output_shape and auto_pad need the image's size when the graph is "
                         f"built, got shape {show_dims(image)}")
    strides = _spatial(ctx, "strides", 1, rank)
    dilations = _spatial(ctx, "dilations", 1, rank)
    targets = list(output_shape)[-rank:] if output_shape is not None else \
        [n * s for n, s in zip(sizes, strides)]
    begin, end = [], []
    for n, k, s, d, e, target in zip(sizes, kernel, strides, dilations, extra, targets):
        total = s * (n - 1) + e + (k - 1) * d + 1 - target
        if total < 0:
            # An output larger than the filters reach: rows and columns that no input
            # element reaches, at the end, as output_padding adds them.
            extra[len(begin)] = e - total
            total = 0
        half = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(half)
        end.append(total - half)
    if rank == 1:
        return Window((1, strides[0]), (1, dilations[0]), (0, begin[0]), (0, end[0]), True)
    return Window(tuple(strides), tuple(dilations), tuple(begin), tuple(end), False)


# -------------------------------------------------------------------- pooling
def _pool(ctx: Context, x):
    """(images, kernel, window) of a MaxPool or AveragePool node."""
    kernel = ctx.attr("kernel_shape")
    if kernel is None:
        raise ctx.refuse("kernel_shape is missing")
    window = _window(ctx, [int(k) for k in kernel], ctx.input_dims(0, x))
    kernel = (1, int(kernel[0])) if window.line else (int(kernel[0]), int(kernel[1]))
    return _as_image(ctx, 0, x, window.line), kernel, window


@converter("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                             "storage_order", "strides"), ranked=_WINDOW_RANKS)
def max_pool(ctx, x):
    ctx.only_first_output()  # the indices output
    images, kernel, window = _pool(ctx, x)
    y = maxpool2d_op(images, kernel, window.stride, window.begin, padding_end=window.end,
                     ceil_mode=bool(ctx.attr("ceil_mode", 0)), dilation=window.dilation)
    return _as_input_rank(ctx, y, window.line)


@converter("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                 "kernel_shape", "pads", "strides"), ranked=_WINDOW_RANKS)
def average_pool(ctx, x):
    images, kernel, window = _pool(ctx, x)
    y = avgpool2d_op(images, kernel, window.stride, window.begin, padding_end=window.end,
                     ceil_mode=bool(ctx.attr("ceil_mode", 0)), dilation=window.dilation,
                     count_include_pad=bool(ctx.attr("count_include_pad", 0)))
    return _as_input_rank(ctx, y, window.line)


@converter("LpPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "p", "pads",
                            "strides"), ranked=_WINDOW_RANKS)
def lp_pool(ctx, x):
    # (sum of |x|^p over the window)^(1/p): the window's mean times its size, the padding
    # counted (zeros add nothing to the sum).
    images, kernel, window = _pool(ctx, x)
    p = int(ctx.attr("p", 2))
    if p < 1 or ctx.attr("ceil_mode", 0):
        raise ctx.refuse(f"p={p}, ceil_mode={ctx.attr('ceil_mode', 0)}: dlsys takes p >= 1 "
                         f"and no ceil mode for LpPool")
    powers = {1: lambda v: abs_op(v), 2: lambda v: v * v}.get(
        p, lambda v: pow_byconst_op(abs_op(v), float(p)))(images)
    sums = avgpool2d_op(powers, kernel, window.stride, window.begin, padding_end=window.end,
                        dilation=window.dilation, count_include_pad=True) \
        * float(kernel[0] * kernel[1])
    y = {1: lambda v: v, 2: sqrt_op}.get(p, lambda v: pow_byconst_op(v, 1.0 / p))(sums)
    return _as_input_rank(ctx, y, window.line)


def _global_pool_input(ctx: Context, x):
    dims = ctx.input_dims(0, x)
    if dims is None or len(dims) not in (3, 4):
        raise ctx.refuse(f"only (N, C, L) lines and NCHW images are supported, got shape "
                         f"{show_dims(dims)}")
    return _as_image(ctx, 0, x, len(dims) == 3), dims


@converter("GlobalAveragePool")
def global_average_pool(ctx, x):
    images, dims = _global_pool_input(ctx, x)
    return _as_input_rank(ctx, global_avgpool_op(images), len(dims) == 3)


@converter("GlobalMaxPool")
def global_max_pool(ctx, x):
    images, dims = _global_pool_input(ctx, x)
    sizes = dims[2:]
    if any(d is None for d in sizes):
        raise ctx.refuse(f"the image's size must be fixed when the graph is built, got shape "
                         f"{show_dims(dims)}")
    # One window over the whole image: max pooling's kernel and gradient.
    kernel = (1, sizes[0]) if len(dims) == 3 else tuple(sizes)
    return _as_input_rank(ctx, maxpool2d_op(images, kernel, 1), len(dims) == 3)


@converter("BatchNormalization", attrs=("epsilon", "momentum", "training_mode"))
def batch_norm(ctx, x, scale, bias, mean, var):
    ctx.only_first_output()
    if ctx.attr("training_mode", 0):
        raise ctx.refuse("training_mode=1 is not supported; dlsys imports batch norm as at "
                         "inference (call train() on the imported module to train it)")
    x = ctx.node_input(0, x)
    params = [ctx.node_input(i, v) for i, v in enumerate((scale, bias, mean, var), 1)]
    # ONNX blends running statistics as running * momentum + batch * (1 - momentum);
    # dlsys, as PyTorch, weighs the batch by its momentum.
    momentum, eps = 1.0 - float(ctx.attr("momentum", 0.9)), float(ctx.attr("epsilon", 1e-5))
    dims = ctx.input_dims(0, x)
    if dims is not None and len(dims) == 2:
        channels = dims[1] if dims[1] is not None else (ctx.input_dims(1, scale) or [None])[0]
        if channels is None:
            raise ctx.refuse("the number of channels is unknown when the graph is built")
        images = reshape_op(x, (-1, channels, 1, 1))
        y = batchnorm2d_op(images, *params, training=ctx.training, momentum=momentum, eps=eps)
        return reshape_to_op(y, x)
    if dims is None or len(dims) != 4:
        raise ctx.refuse(f"batch norm of (N, C) rows or NCHW images is supported, got shape "
                         f"{show_dims(dims)}")
    return batchnorm2d_op(x, *params, training=ctx.training, momentum=momentum, eps=eps)
