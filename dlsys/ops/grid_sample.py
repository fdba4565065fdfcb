"""Sampling an image at the positions a grid holds (ONNX's GridSample, PyTorch's
``F.grid_sample``): nearest, linear or cubic (2-d images only) interpolation, zeros, border
or reflection padding, corners aligned or not, over 2-d (N, C, H, W) or 3-d
(N, C, D, H, W) images with grids (N, *out, 2 or 3) of coordinates in [-1, 1], x first.

Both inputs have gradients: the image's scatters each output gradient back into the pixels
its taps read (``GridSampleInputGradOp``), the grid's sums over channels the output's slope
along each coordinate (``GridSampleGridGradOp``; 0 for nearest). The kernels are the resize
family's (``dlsys.kernels.resize.grid_sample``).
"""

from __future__ import annotations

from dlsys.errors import ArgumentError, GradientError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text

MODES = ("nearest", "linear", "cubic")
PADDINGS = ("zeros", "border", "reflection")


def _check(node: Node, x_shape, grid_shape) -> tuple:
    x_shape, grid_shape = tuple(x_shape), tuple(grid_shape)
    spatial = len(x_shape) - 2
    problem = None
    if spatial not in (2, 3):
        problem = "the image must be (N, C, H, W) or (N, C, D, H, W)"
    elif len(grid_shape) != spatial + 2 or grid_shape[-1] != spatial \
            or grid_shape[0] != x_shape[0]:
        problem = f"the grid must be (N, *out, {spatial}) for this image"
    elif node.attrs["mode"] == "cubic" and spatial != 2:
        problem = "cubic sampling takes 2-d images"
    if problem:
        raise ShapeError(f"{node.name}: {problem}; got shapes {x_shape} and {grid_shape}")
    return x_shape, grid_shape


def _params(node: Node, x_shape, grid_shape) -> tuple:
    return (tuple(x_shape), tuple(grid_shape), node.attrs["mode"], node.attrs["padding"],
            node.attrs["align_corners"])


class GridSampleOp(Op):
    """``grid_sample_op(x, grid, mode, padding, align_corners)``: shape (N, C, *out)."""

    name = "GridSample"

    def __call__(self, x: Node, grid: Node, mode: str = "linear", padding: str = "zeros",
                 align_corners: bool = False) -> Node:
        x, grid = check_node(self.name, "x", x), check_node(self.name, "grid", grid)
        where = f"GridSample({short_name(x)})"
        if mode not in MODES or padding not in PADDINGS:
            raise ArgumentError(f"{where}: mode must be one of {MODES} and padding one of "
                                f"{PADDINGS}, got {mode!r} and {padding!r}")
        return Node(self, [x, grid], {"mode": mode, "padding": padding,
                                      "align_corners": bool(align_corners)})

    def describe(self, node):
        return f"GridSample({short_name(node.inputs[0])}, {short_name(node.inputs[1])}, " \
               f"{node.attrs['mode']}, {node.attrs['padding']})"

    def infer_shape(self, node, input_shapes):
        x_shape, grid_shape = _check(node, *input_shapes)
        return (*x_shape[:2], *grid_shape[1:-1])

    def gradient(self, node, output_grad):
        x, grid = node.inputs
        return [grid_sample_input_grad_op(output_grad, grid, x, node.attrs),
                grid_sample_grid_grad_op(output_grad, x, grid, node.attrs)]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("grid_sample", _params(node, *_check(node, *input_shapes)))


class _GridSampleAdjointOp(Op):
    """What the two adjoints share: the forward's attributes and no second derivative."""

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: grid sampling has no second derivative in dlsys")


class GridSampleInputGradOp(_GridSampleAdjointOp):
    """The image's gradient from the output's gradient and the grid (``like`` the image,
    lending its shape)."""

    name = "GridSampleInputGrad"

    def __call__(self, grad: Node, grid: Node, like: Node, attrs: dict) -> Node:
        return Node(self, [grad, grid, like], dict(attrs))

    def kernel_inputs(self, node):
        return node.inputs[:2]

    def infer_shape(self, node, input_shapes):
        x_shape, grid_shape = _check(node, input_shapes[2], input_shapes[1])
        expected = (*x_shape[:2], *grid_shape[1:-1])
        if tuple(input_shapes[0]) != expected:
            raise ShapeError(f"{node.name}: the gradient must have shape {expected} "
                             f"({inputs_text(node, input_shapes)})")
        return x_shape

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("grid_sample_input_gradient",
                          _params(node, *_check(node, input_shapes[2], input_shapes[1])))


class GridSampleGridGradOp(_GridSampleAdjointOp):
    """The grid's gradient from the output's gradient, the image and the grid."""

    name = "GridSampleGridGrad"

    def __call__(self, grad: Node, x: Node, grid: Node, attrs: dict) -> Node:
        return Node(self, [grad, x, grid], dict(attrs))

    def infer_shape(self, node, input_shapes):
        x_shape, grid_shape = _check(node, input_shapes[1], input_shapes[2])
        return grid_shape

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("grid_sample_grid_gradient",
                          _params(node, *_check(node, input_shapes[1], input_shapes[2])))


grid_sample_op = GridSampleOp()
grid_sample_input_grad_op = GridSampleInputGradOp()
grid_sample_grid_grad_op = GridSampleGridGradOp()

__all__ = ["GridSampleOp", "GridSampleInputGradOp", "GridSampleGridGradOp", "grid_sample_op",
           "grid_sample_input_grad_op", "grid_sample_grid_grad_op", "MODES", "PADDINGS"]
