"""Convolutions of NCHW images with OIHW filters."""

from __future__ import annotations

import numpy as np

from dlsys.graph import Node, Op
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.shapes import apply_rule, conv2d_shape


class Conv2dOp(Op):
    """NCHW convolution of images ``x`` with filters ``f``, stride 1, no padding (forward only)."""

    name = "Conv2d"

    def __call__(self, x: Node, f: Node) -> Node:
        return Node(self, [x, f])

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, conv2d_shape, *input_shapes)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("conv2d", (tuple(input_shapes[0]), tuple(input_shapes[1])))

    def reference(self, node, x, f):
        windows = np.lib.stride_tricks.sliding_window_view(x, f.shape[2:], axis=(2, 3))
        return np.einsum("bchwij,ocij->bohw", windows, f)


conv2d_op = Conv2dOp()
