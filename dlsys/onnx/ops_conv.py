"""ONNX's convolutions, pooling and batch norm as dlsys graph nodes (see ``ops``)."""

from __future__ import annotations

from dlsys.onnx.bounds import SPATIAL, SPATIAL_PAIRS
from dlsys.onnx.ops import Context, converter, show_dims
from dlsys.ops import (
    avgpool2d_op,
    conv2d_op,
    global_avgpool_op,
    maxpool2d_op,
)
from dlsys.ops.norm import batchnorm2d_op
from dlsys.ops.reshape import reshape_op, reshape_to_op

# ---------------------------------------------------------------- convolution
# A window's sizes run over the axes after (N, C) of its input.
_WINDOW_RANKS = {"kernel_shape": SPATIAL, "strides": SPATIAL, "dilations": SPATIAL,
                 "pads": SPATIAL_PAIRS}


def _window(ctx: Context, rank_from: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (stride, padding) pairs of a 2-d window, every unsupported setting refused."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise ctx.refuse(f"auto_pad={auto_pad!r} is not supported; dlsys takes explicit pads "
                         f"(auto_pad NOTSET or VALID)")
    dilations = ctx.attr("dilations")
    if dilations is not None and any(d != 1 for d in dilations):
        raise ctx.refuse(f"dilations={dilations} are not supported (only 1)")
    strides = ctx.attr("strides", [1, 1])
    pads = [0, 0, 0, 0] if auto_pad == "VALID" else ctx.attr("pads", [0, 0, 0, 0])
    if len(strides) != 2 or len(pads) != 4:
        raise ctx.refuse(f"only 2-d windows over NCHW images are supported ({rank_from}: "
                         f"strides {strides}, pads {pads})")
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise ctx.refuse(f"pads={pads} pad the two sides of an axis differently; dlsys pads "
                         f"both sides alike (pads [h, w, h, w])")
    return (int(strides[0]), int(strides[1])), (int(pads[0]), int(pads[1]))


@converter("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
           ranked=_WINDOW_RANKS)
def conv(ctx, x, w, b=None):
    x, w = ctx.node_input(0, x), ctx.node_input(1, w)
    if ctx.attr("group", 1) != 1:
        raise ctx.refuse(f"group={ctx.attr('group')} is not supported (grouped and depthwise "
                         f"convolutions); dlsys convolves with group 1")
    dims_w = ctx.input_dims(1, w)
    if dims_w is not None and len(dims_w) != 4:
        raise ctx.refuse(f"only 2-d convolutions are supported; the weight has shape "
                         f"{show_dims(dims_w)}")
    kernel = ctx.attr("kernel_shape")
    if kernel is not None and dims_w is not None and tuple(kernel) != tuple(dims_w[2:]):
        raise ctx.refuse(f"kernel_shape {kernel} differs from the weight's {dims_w[2:]}")
    stride, padding = _window(ctx, f"weight {show_dims(dims_w)}")
    y = conv2d_op(x, w, stride, padding)
    if b is None:
        return y
    return y + reshape_op(ctx.node_input(2, b), (-1, 1, 1))


def _pool_window(ctx: Context):
    kernel = ctx.attr("kernel_shape")
    if kernel is None or len(kernel) != 2:
        raise ctx.refuse(f"only 2-d pooling over NCHW images is supported (kernel_shape "
                         f"{kernel})")
    if ctx.attr("ceil_mode", 0):
        raise ctx.refuse("ceil_mode=1 is not supported; dlsys rounds output sizes down")
    stride, padding = _window(ctx, f"kernel_shape {kernel}")
    return (int(kernel[0]), int(kernel[1])), stride, padding


@converter("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                             "storage_order", "strides"), ranked=_WINDOW_RANKS)
def max_pool(ctx, x):
    ctx.only_first_output()  # the indices output
    return maxpool2d_op(ctx.node_input(0, x), *_pool_window(ctx))


@converter("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                 "kernel_shape", "pads", "strides"), ranked=_WINDOW_RANKS)
def average_pool(ctx, x):
    kernel, stride, padding = _pool_window(ctx)
    if padding != (0, 0) and not ctx.attr("count_include_pad", 0):
        raise ctx.refuse("count_include_pad=0 with padding is not supported; dlsys counts "
                         "the padding in each mean (count_include_pad=1)")
    return avgpool2d_op(ctx.node_input(0, x), kernel, stride, padding)


@converter("GlobalAveragePool")
def global_average_pool(ctx, x):
    dims = ctx.input_dims(0, x)
    if dims is not None and len(dims) != 4:
        raise ctx.refuse(f"only NCHW images are supported, got shape {show_dims(dims)}")
    return global_avgpool_op(ctx.node_input(0, x))


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
