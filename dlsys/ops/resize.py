"""Resampling a tensor along its trailing axes (PyTorch's ``F.interpolate``, ONNX's Resize):
nearest or linear (bilinear over an image's two axes), with ONNX's coordinate modes, and
its adjoint.

``resize_op(x, sizes, scales)`` resizes the last ``len(sizes)`` axes of ``x`` to ``sizes``.
Output index ``i`` of a resized axis reads the input at a coordinate set by ``coordinate``
and by the axis's ``scale`` (given, or the output's size over the input's):

- ``"half_pixel"``: ``(i + 0.5) / scale - 0.5`` (PyTorch's ``align_corners=False``);
  ``"pytorch_half_pixel"`` likewise, but 0 for an axis resized to one element;
- ``"align_corners"``: ``i * (size - 1) / (scale * size - 1)`` (``align_corners=True``);
- ``"asymmetric"``: ``i / scale`` (PyTorch's nearest is this with ``nearest="floor"``);
- ``"tf_half_pixel_for_nn"``: ``(i + 0.5) / scale``; ``"half_pixel_symmetric"``:
  half_pixel shifted so that the centres of input and output coincide.

``mode="nearest"`` copies the element at the coordinate rounded as ``nearest`` says
(``"round_prefer_floor"``, ``"round_prefer_ceil"``, ``"floor"``, ``"ceil"``);
``mode="linear"`` interpolates between the two elements around it along each axis. Indices
outside the input read its edge. Both are one kernel of the resize family; the adjoint
sums, for each input element, the output gradients that read it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text

MODES = ("nearest", "linear")
COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_half_pixel_for_nn", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _check_attrs(where: str, sizes, scales, mode: str, coordinate: str,
                 nearest: str) -> dict:
    """The checked attributes of a resize or of its adjoint."""
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise ArgumentTypeError(f"{where}: sizes must be a tuple of ints, got "
                                f"{sizes!r}") from None
    if not sizes or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                            and n > 0 for n in sizes):
        raise ArgumentError(f"{where}: sizes must be positive ints, one per resized axis, "
                            f"got {sizes!r}")
    if scales is not None:
        try:
            scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError):
            raise ArgumentTypeError(f"{where}: scales must be a tuple of numbers or None, "
                                    f"got {scales!r}") from None
        if len(scales) != len(sizes) or not all(math.isfinite(s) and s > 0 for s in scales):
            raise ArgumentError(f"{where}: scales must be positive numbers, one per size "
                                f"{sizes}, got {scales}")
    for name, value, allowed in (("mode", mode, MODES), ("coordinate", coordinate, COORDINATES),
                                 ("nearest", nearest, NEAREST_MODES)):
        if value not in allowed:
            raise ArgumentError(f"{where}: {name} must be one of {allowed}, got {value!r}")
    return {"sizes": tuple(int(n) for n in sizes), "scales": scales, "mode": mode,
            "coordinate": coordinate, "nearest": nearest}


def _input_shape(node: Node, shape) -> tuple[int, ...]:
    """The unresized shape ``shape``, checked against the node's sizes."""
    shape = tuple(shape)
    if len(shape) < len(node.attrs["sizes"]):
        raise ShapeError(f"{node.name}: {len(node.attrs['sizes'])} resized axes for rank "
                         f"{len(shape)}")
    return shape


def _resized(shape, sizes) -> tuple[int, ...]:
    return (*shape[:len(shape) - len(sizes)], *sizes)


def _scales(attrs: dict, shape) -> tuple[float, ...]:
    """Each resized axis's scale: given, or the output's size over the input's."""
    if attrs["scales"] is not None:
        return attrs["scales"]
    lead = len(shape) - len(attrs["sizes"])
    return tuple(out / shape[lead + d] for d, out in enumerate(attrs["sizes"]))


def _spec_params(node: Node, shape) -> tuple:
    a = node.attrs
    return (tuple(shape), a["sizes"], _scales(a, shape), a["mode"], a["coordinate"],
            a["nearest"])


class ResizeOp(Op):
    """``x`` resampled to ``sizes`` along its trailing axes (see the module's docstring)."""

    name = "Resize"

    def __call__(self, x: Node, sizes, scales=None, mode: str = "nearest",
                 coordinate: str = "half_pixel", nearest: str = "round_prefer_floor") -> Node:
        x = check_node(self.name, "x", x)
        where = f"Resize({short_name(x)})"
        return Node(self, [x], _check_attrs(where, sizes, scales, mode, coordinate, nearest))

    def describe(self, node):
        a = node.attrs
        return f"Resize({short_name(node.inputs[0])}, {a['sizes']}, {a['mode']})"

    def infer_shape(self, node, input_shapes):
        return _resized(_input_shape(node, input_shapes[0]), node.attrs["sizes"])

    def gradient(self, node, output_grad):
        return [resize_gradient_op(output_grad, node.inputs[0], **node.attrs)]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("resize", _spec_params(node, _input_shape(node, input_shapes[0])))

    def reference(self, node, x):
        return resize_reference(*_spec_params(node, x.shape), x)


class ResizeGradientOp(Op):
    """The resize's adjoint: for each element of ``like`` (the resized input, which lends
    its shape only), the sum of ``grad`` over the output elements that read it, each times
    the weight it was read with."""

    name = "ResizeGrad"

    def __call__(self, grad: Node, like: Node, sizes, scales=None, mode: str = "nearest",
                 coordinate: str = "half_pixel", nearest: str = "round_prefer_floor") -> Node:
        where = f"ResizeGrad({short_name(grad)})"
        return Node(self, [check_node(self.name, "grad", grad),
                           check_node(self.name, "like", like)],
                    _check_attrs(where, sizes, scales, mode, coordinate, nearest))

    def describe(self, node):
        return f"ResizeGrad({short_name(node.inputs[0])}, {node.attrs['mode']})"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def infer_shape(self, node, input_shapes):
        grad, like = (tuple(s) for s in input_shapes)
        like = _input_shape(node, like)
        if grad != _resized(like, node.attrs["sizes"]):
            raise ShapeError(f"{node.name}: the gradient must have the resized shape "
                             f"{_resized(like, node.attrs['sizes'])} "
                             f"({inputs_text(node, input_shapes)})")
        return like

    def gradient(self, node, output_grad):
        # Linear in grad: its adjoint is the resize itself.
        return [resize_op(output_grad, **node.attrs), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("resize_gradient", _spec_params(node, output_shape))

    def reference(self, node, grad, like):
        return resize_reference(*_spec_params(node, like.shape), grad, adjoint=True)


# ------------------------------------------------------------------ numpy reference
def axis_matrix(size: int, out: int, scale: float, mode: str, coordinate: str,
                nearest: str) -> np.ndarray:
    """The (out, size) matrix of one resized axis: row ``i`` holds the weights output
    ``i`` gives each input element (numpy, float64, the formulas of ONNX's reference)."""
    if scale == 1.0 and out == size:
        return np.eye(size)
    i = np.arange(out, dtype=np.float64)
    if coordinate == "asymmetric":
        x = i / scale
    elif coordinate == "tf_half_pixel_for_nn":
        x = (i + 0.5) / scale
    elif coordinate == "align_corners":
        out_float = scale * size
        x = np.zeros(out) if out_float == 1.0 else i * (size - 1) / (out_float - 1)
    elif coordinate == "pytorch_half_pixel" and out == 1:
        x = np.zeros(out)
    else:
        x = (i + 0.5) / scale - 0.5
        if coordinate == "half_pixel_symmetric":
            x = size / 2 * (1 - out / (scale * size)) + x
    matrix = np.zeros((out, size))
    rows = np.arange(out)
    if mode == "nearest":
        rounded = {"round_prefer_floor": np.ceil(x - 0.5), "round_prefer_ceil":
                   np.floor(x + 0.5), "floor": np.floor(x), "ceil": np.ceil(x)}[nearest]
        matrix[rows, np.clip(rounded.astype(np.int64), 0, size - 1)] = 1.0
        return matrix
    below = np.floor(x)
    weight = x - below
    first = np.clip(below.astype(np.int64), 0, size - 1)
    second = np.clip(below.astype(np.int64) + 1, 0, size - 1)
    np.add.at(matrix, (rows, first), 1.0 - weight)
    np.add.at(matrix, (rows, second), weight)
    return matrix


def resize_reference(shape, sizes, scales, mode: str, coordinate: str, nearest: str,
                     value: np.ndarray, adjoint: bool = False) -> np.ndarray:
    """The resize of ``value`` (of ``shape``), or with ``adjoint`` its adjoint applied to
    ``value`` (a gradient of the resized shape), one axis at a time."""
    lead = len(shape) - len(sizes)
    out = value.astype(np.float64)
    for d, (size, out_size, scale) in enumerate(zip(shape[lead:], sizes, scales)):
        matrix = axis_matrix(size, out_size, scale, mode, coordinate, nearest)
        out = np.moveaxis(np.tensordot(matrix.T if adjoint else matrix, out,
                                       axes=(1, lead + d)), 0, lead + d)
    return out.astype(value.dtype)


resize_op = ResizeOp()
resize_gradient_op = ResizeGradientOp()
