"""Integer values fed to a graph (ids, an attention mask) read as floating-point numbers:
ONNX's Cast of an integer input to float, the one place where dlsys computes on a value fed
as integers."""

from __future__ import annotations

import numpy as np

from dlsys.graph import Node, Op
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node


class AsFloatOp(Op):
    """``x`` as the graph's floating-point type: an integer array fed to ``x`` converted
    (exactly, for magnitudes below 2**24 in float32), a floating-point one copied. ``x`` is
    an optional index input, so a placeholder fed integers keeps its type up to here."""

    name = "AsFloat"
    optional_index_inputs = (0,)

    def __call__(self, x: Node) -> Node:
        return Node(self, [check_node(self.name, "x", x)])

    def infer_shape(self, node, input_shapes):
        return tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        # Integers get no gradient; a float input passes it through.
        return [output_grad]

    def index_kernel_spec(self, node, input_shapes, output_shape, index_dtypes):
        return KernelSpec("as_float", (tuple(input_shapes[0]), index_dtypes[0]))

    def reference(self, node, x):
        return np.asarray(x, dtype=np.float64)


as_float_op = AsFloatOp()
