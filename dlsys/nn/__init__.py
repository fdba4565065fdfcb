"""``dlsys.nn``: modules, layers and losses built on the graph, its passes and TVM kernels."""

from dlsys.nn import functional, init
from dlsys.nn.conv import AvgPool2d, Conv2d, MaxPool2d
from dlsys.nn.init import manual_seed
from dlsys.nn.layers import BatchNorm2d, Dropout, Flatten, Linear, ReLU, Sigmoid, Tanh
from dlsys.nn.module import Module, Sequential
from dlsys.ops.placeholder import Parameter

__all__ = ["Module", "Parameter", "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh", "Dropout",
           "BatchNorm2d",
           "Flatten",
           "Conv2d", "MaxPool2d", "AvgPool2d",
           "functional", "init", "manual_seed"]
