"""Conversions between element types inside a graph: integer values fed to it (ids, an
attention mask) read as floating-point numbers (ONNX's Cast of an integer input to float,
the one place where dlsys computes on a value fed as integers), and floating-point values
rounded to a narrow type (ONNX's Cast to float16 or bfloat16), which dlsys holds in the
graph's own type."""

from __future__ import annotations

import numpy as np

from dlsys.errors import ArgumentError
from dlsys.graph import Node, Op
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.elementwise import ElementwiseOp


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


def _round_bfloat16(x: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.asarray(x).dtype)


class RoundFloat16Op(ElementwiseOp, name="RoundFloat16", kernel_kind="round_float16",
                     formula=lambda x: x.astype(np.float16).astype(x.dtype)):
    """``x`` rounded to the nearest float16 (ties to even) and held in the graph's type:
    ONNX's Cast to float16 inside a graph that dlsys computes in float32 or float64. The
    gradient passes straight through, as under PyTorch's autocast, so that a model with
    such casts fine-tunes (the rounding's own derivative is 0 almost everywhere)."""

    def gradient(self, node, output_grad):
        return [output_grad]


class RoundBfloat16Op(ElementwiseOp, name="RoundBfloat16", kernel_kind="round_bfloat16",
                      formula=_round_bfloat16):
    """``x`` rounded to the nearest bfloat16 (ties to even) in the graph's type; the
    gradient passes straight through, as ``RoundFloat16Op``'s."""

    def gradient(self, node, output_grad):
        return [output_grad]


round_float16_op = RoundFloat16Op()
round_bfloat16_op = RoundBfloat16Op()


# The float8 and float4 types ``RoundSmallFloatOp`` rounds to, by ml_dtypes' name (the
# kernels' ``elementwise.narrow.FORMATS`` describes each).
SMALL_FLOAT_TYPES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                     "float4_e2m1fn")


def _round_to_format(x: np.ndarray, name: str, saturate: bool) -> np.ndarray:
    """numpy's (ml_dtypes') rounding to the small float type ``name``, clamped first where
    ``saturate`` (ONNX's Cast, as ``onnx.numpy_helper.saturate_cast``)."""
    import ml_dtypes

    dtype = np.dtype(getattr(ml_dtypes, name))
    if saturate:
        largest = float(ml_dtypes.finfo(dtype).max)
        x = np.where(np.isnan(x), x, np.clip(x, -largest, largest))
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.asarray(x).astype(dtype).astype(np.asarray(x).dtype)
    # NaN stays NaN in the graph, also for float4, which has none (ml_dtypes gives -0).
    return np.where(np.isnan(x), x, rounded)


class RoundSmallFloatOp(ElementwiseOp, name="RoundSmallFloat", kernel_kind="round_small"):
    """``x`` rounded to the nearest value of a float8 or float4 type (ties to even), held in
    the graph's type: ONNX's Cast to one of them. ``saturate`` clamps to the type's largest
    finite value first (ONNX's default); otherwise an overflow is the type's infinity or
    NaN. NaN stays NaN (float4 has none: the session's output conversion decides). The
    gradient passes straight through, as ``RoundFloat16Op``'s."""

    def __call__(self, x: Node, name: str, saturate: bool = True) -> Node:
        if name not in SMALL_FLOAT_TYPES:
            raise ArgumentError(f"RoundSmallFloat: no type {name!r}; rounds to "
                                f"{', '.join(SMALL_FLOAT_TYPES)}")
        (x,) = self.check_inputs((x,))
        return Node(self, [x], {"format": name, "saturate": bool(saturate)})

    def example(self, inputs):
        return self(inputs[0], "float8_e4m3fn")

    def node_kind(self, node):
        return f"round_{node.attrs['format']}{'_saturate' * node.attrs['saturate']}"

    def gradient(self, node, output_grad):
        return [output_grad]

    def reference(self, node, x):
        return _round_to_format(x, node.attrs["format"], node.attrs["saturate"])


round_small_float_op = RoundSmallFloatOp()
