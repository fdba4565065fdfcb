"""Repeating a tensor: ``tile`` (numpy's ``tile``; ONNX's Tile) and ``expand`` (a broadcast
to a shape given as numbers, numpy's ``broadcast_to`` read both ways as ONNX's Expand),
with their adjoints, which sum the copies back."""

from __future__ import annotations

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.reduce import reducesumto_op, sum_op
from dlsys.ops.reshape import _AliasOp
from dlsys.ops.shapes import broadcast_shape, inputs_text
from dlsys.ops.slicing import _is_int


def _check_counts(where: str, what: str, counts) -> tuple[int, ...]:
    if isinstance(counts, np.ndarray):
        counts = counts.reshape(-1).tolist()
    if not isinstance(counts, (tuple, list)) or not counts \
            or not all(_is_int(c) for c in counts):
        raise ArgumentTypeError(f"{where}: {what} must be a non-empty tuple of ints, got "
                                f"{counts!r}")
    if any(c < 1 for c in counts):
        raise ArgumentError(f"{where}: {what} must be positive, got {tuple(counts)}")
    return tuple(int(c) for c in counts)


def _tiled(node: Node, shape, input_shapes) -> tuple[int, ...]:
    repeats = node.attrs["repeats"]
    if len(repeats) != len(shape):
        raise ShapeError(f"{node.name}: {len(repeats)} repeat counts for rank {len(shape)} "
                         f"({inputs_text(node, input_shapes)})")
    return tuple(n * r for n, r in zip(shape, repeats))


class TileOp(Op):
    """``numpy.tile(x, repeats)`` with one repeat count per axis: axis ``d`` of the output
    is ``repeats[d]`` copies of ``x`` along it."""

    name = "Tile"

    def __call__(self, x: Node, repeats) -> Node:
        x = check_node(self.name, "x", x)
        return Node(self, [x], {"repeats": _check_counts(f"Tile({short_name(x)})", "repeats",
                                                         repeats)})

    def describe(self, node):
        return f"Tile({short_name(node.inputs[0])}, {node.attrs['repeats']})"

    def infer_shape(self, node, input_shapes):
        return _tiled(node, tuple(input_shapes[0]), input_shapes)

    def is_alias(self, node, input_shapes):
        return all(r == 1 for r in node.attrs["repeats"])

    def gradient(self, node, output_grad):
        # Each axis seen as (copies, size); the copies summed away.
        repeats = node.attrs["repeats"]
        copies = tile_axes_op(output_grad, node.inputs[0], repeats)
        return [sum_op(copies, tuple(range(0, 2 * len(repeats), 2)))]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        _tiled(node, shape, input_shapes)
        return KernelSpec("tile", (shape, node.attrs["repeats"]))

    def reference(self, node, x):
        return np.tile(x, node.attrs["repeats"])


class TileAxesOp(_AliasOp):
    """A tiled tensor (``like`` tiled ``repeats`` times, ``like`` lending its shape only)
    viewed with each axis split in two, ``(repeats[d], like.shape[d])``: a view, the tile's
    adjoint before its sum."""

    name = "TileAxes"

    def __call__(self, tiled: Node, like: Node, repeats) -> Node:
        return Node(self, [check_node(self.name, "tiled", tiled),
                           check_node(self.name, "like", like)],
                    {"repeats": _check_counts(f"TileAxes({short_name(tiled)})", "repeats",
                                              repeats)})

    def infer_shape(self, node, input_shapes):
        tiled, like = (tuple(s) for s in input_shapes)
        if _tiled(node, like, input_shapes) != tiled:
            raise ShapeError(f"{node.name}: the tiled tensor must have shape "
                             f"{_tiled(node, like, input_shapes)} "
                             f"({inputs_text(node, input_shapes)})")
        return tuple(v for r, n in zip(node.attrs["repeats"], like) for v in (r, n))

    def reference(self, node, tiled, like):
        return tiled.reshape(self.infer_shape(node, [tiled.shape, like.shape]))


def _expanded(node: Node, shape, input_shapes) -> tuple[int, ...]:
    out = broadcast_shape(shape, node.attrs["shape"])
    if out is None:
        raise ShapeError(f"{node.name}: cannot broadcast together with shape "
                         f"{node.attrs['shape']} ({inputs_text(node, input_shapes)})")
    return out


class ExpandOp(Op):
    """``x`` broadcast with a tensor of shape ``shape`` (numpy's rules, both ways: a size-1
    axis of either side takes the other's size), as ONNX's Expand."""

    name = "Expand"
    broadcasts_input = True

    def __call__(self, x: Node, shape) -> Node:
        x = check_node(self.name, "x", x)
        return Node(self, [x], {"shape": _check_counts(f"Expand({short_name(x)})", "shape",
                                                       shape)})

    def describe(self, node):
        return f"Expand({short_name(node.inputs[0])}, {node.attrs['shape']})"

    def infer_shape(self, node, input_shapes):
        return _expanded(node, tuple(input_shapes[0]), input_shapes)

    def is_alias(self, node, input_shapes):
        return self.infer_shape(node, input_shapes) == tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        return [reducesumto_op(output_grad, node.inputs[0])]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("broadcast_to", (tuple(input_shapes[0]), tuple(output_shape)))

    def reference(self, node, x):
        return np.broadcast_to(x, _expanded(node, x.shape, [x.shape])).copy()


tile_op = TileOp()
tile_axes_op = TileAxesOp()
expand_to_op = ExpandOp()
