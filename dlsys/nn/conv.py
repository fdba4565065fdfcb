"""Convolution and pooling layers, with PyTorch's names, shapes and default initialisation:
``Conv2d.weight`` is ``(out_channels, in_channels, kh, kw)`` and ``Conv2d.bias`` is
``(out_channels,)``, so a state dict moves between the two through numpy."""

from __future__ import annotations

from dlsys.checks import check_flag
from dlsys.errors import ShapeError
from dlsys.graph import Node
from dlsys.nn import init
from dlsys.nn.layers import check_size
from dlsys.nn.module import Module
from dlsys.ops import avgpool2d_op, conv2d_op, maxpool2d_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.pool import pool_attrs
from dlsys.ops.reshape import reshape_op
from dlsys.ops.shapes import Pair, window_pair


def _pair(layer: str, name: str, value, minimum: int) -> Pair:
    try:
        return window_pair(name, value, minimum)
    except ShapeError as err:
        raise ShapeError(f"{layer}: {err}") from None


def _config_value(pair: Pair | None):
    """A pair as a model file stores it: one int where both sides agree (PyTorch's usual
    spelling, and a plain JSON number), else the list."""
    if pair is None or pair[0] != pair[1]:
        return None if pair is None else list(pair)
    return pair[0]


class Conv2d(Module):
    """``y = conv2d(x, weight, stride, padding) + bias`` over NCHW images.

    The bias, a ``(out_channels,)`` parameter as in PyTorch, is read as ``(out_channels, 1,
    1)`` through a reshape (a view, no kernel) and broadcast over the batch and the image.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True):
        super().__init__()
        self.in_channels = check_size("Conv2d", "in_channels", in_channels)
        self.out_channels = check_size("Conv2d", "out_channels", out_channels)
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = _pair("Conv2d", "stride", stride, 1)
        self.padding = _pair("Conv2d", "padding", padding, 0)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self.weight = Parameter(init.default_weight(shape, fan_in), "weight")
        self.bias = (Parameter(init.default_bias((self.out_channels,), fan_in), "bias")
                     if check_flag("bias", bias) else None)

    def forward(self, x: Node) -> Node:
        y = conv2d_op(x, self.weight, self.stride, self.padding)
        if self.bias is None:
            return y
        return y + reshape_op(self.bias, (self.out_channels, 1, 1))

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": _config_value(self.kernel_size),
                "stride": _config_value(self.stride), "padding": _config_value(self.padding),
                "bias": self.bias is not None}


class _Pool2d(Module):
    pool = staticmethod(maxpool2d_op)

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        attrs = pool_attrs(type(self).__name__, kernel_size, stride, padding)
        self.kernel_size, self.padding = attrs["kernel"], attrs["padding"]
        # None stays None: PyTorch's default, the stride following the kernel size.
        self.stride = None if stride is None else attrs["stride"]

    def forward(self, x: Node) -> Node:
        return self.pool(x, self.kernel_size, self.stride, self.padding)

    def config(self) -> dict:
        return {"kernel_size": _config_value(self.kernel_size),
                "stride": _config_value(self.stride), "padding": _config_value(self.padding)}


class MaxPool2d(_Pool2d):
    """The maximum of each window; padding never wins (it is -inf)."""

    pool = staticmethod(maxpool2d_op)


class AvgPool2d(_Pool2d):
    """The mean of each window; padding counts as zeros (PyTorch's ``count_include_pad``)."""

    pool = staticmethod(avgpool2d_op)
