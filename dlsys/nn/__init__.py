"""``dlsys.nn``: modules, layers and losses built on the graph, its passes and TVM kernels."""

from dlsys.nn import functional, init
from dlsys.nn.conv import AvgPool2d, Conv2d, MaxPool2d
from dlsys.nn.gpt import GPT, GPTBlock
from dlsys.nn.init import manual_seed
from dlsys.nn.layers import (
    GELU,
    BatchNorm2d,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    Linear,
    ReLU,
    Sigmoid,
    Tanh,
)
from dlsys.nn.module import Module, Sequential
from dlsys.nn.transformer import MultiheadAttention, TransformerEncoderLayer
from dlsys.ops.placeholder import Parameter

__all__ = ["GPT", "GPTBlock", "Module", "Parameter",
           "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh", "Dropout",
           "BatchNorm2d",
           "Flatten",
           "Conv2d", "MaxPool2d", "AvgPool2d",
           "Embedding", "LayerNorm", "GELU", "MultiheadAttention", "TransformerEncoderLayer",
           "functional", "init", "manual_seed"]
