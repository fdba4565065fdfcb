"""Joining tensors along an axis (numpy's ``concatenate``, PyTorch's ``torch.cat``), and its
adjoint: each input's part of the gradient, cut out where that input sits."""

from __future__ import annotations

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.elementwise import zeroslike_op
from dlsys.ops.shapes import inputs_text
from dlsys.ops.slicing import _is_int


def _check_axis(where: str, axis) -> int:
    if not _is_int(axis):
        raise ArgumentTypeError(f"{where}: axis must be an int, got {type(axis).__name__} "
                                f"{axis!r}")
    return int(axis)


def concat_shape(node: Node, shapes: list[tuple[int, ...]]) -> tuple[tuple[int, ...], int]:
    """The joined shape of ``shapes`` along the node's axis, and that axis made
    non-negative: every shape of one rank, equal on every other axis."""
    first = shapes[0]
    rank = len(first)
    axis = node.attrs["axis"]
    if not -rank <= axis < rank:
        raise ShapeError(f"{node.name}: axis {axis} is out of range for rank {rank} "
                         f"({inputs_text(node, shapes)})")
    axis %= rank
    for shape in shapes[1:]:
        if len(shape) != rank or any(n != m for d, (n, m) in enumerate(zip(shape, first))
                                     if d != axis):
            raise ShapeError(f"{node.name}: the inputs must agree on every axis but {axis} "
                             f"({inputs_text(node, shapes)})")
    return (*first[:axis], sum(s[axis] for s in shapes), *first[axis + 1:]), axis


class ConcatOp(Op):
    """``concatenate(inputs, axis)``: the inputs one after another along ``axis`` (negative
    counts from the end), any number of them, equal in every other axis."""

    name = "Concat"

    def __call__(self, inputs, axis: int) -> Node:
        if isinstance(inputs, Node) or not isinstance(inputs, (list, tuple)) or not inputs:
            raise ArgumentError(f"Concat: inputs must be a non-empty list of graph Nodes, got "
                                f"{inputs!r}")
        inputs = [check_node(self.name, f"inputs[{i}]", x) for i, x in enumerate(inputs)]
        return Node(self, inputs, {"axis": _check_axis("Concat", axis)})

    def describe(self, node):
        names = ", ".join(short_name(x) for x in node.inputs)
        return f"Concat([{names}], axis={node.attrs['axis']})"

    def infer_shape(self, node, input_shapes):
        return concat_shape(node, [tuple(s) for s in input_shapes])[0]

    def is_alias(self, node, input_shapes):
        return len(node.inputs) == 1

    def gradient(self, node, output_grad):
        # Part i of the gradient is where input i sits; the offsets are resolved from the
        # inputs' shapes once they are known.
        return [concat_part_op(output_grad, node.inputs, node.attrs["axis"], i)
                for i in range(len(node.inputs))]

    def kernel_spec(self, node, input_shapes, output_shape):
        shapes = tuple(tuple(s) for s in input_shapes)
        return KernelSpec("concat", (shapes, concat_shape(node, list(shapes))[1]))

    def reference(self, node, *arrays):
        return np.concatenate(arrays, axis=node.attrs["axis"])


class ConcatPartOp(Op):
    """Part ``part`` of ``joined``, the concatenation of tensors shaped like ``parts`` along
    ``axis``: the concatenation's adjoint for input ``part``. The ``parts`` lend their
    shapes only."""

    name = "ConcatPart"

    def __call__(self, joined: Node, parts, axis: int, part: int) -> Node:
        parts = [check_node(self.name, f"parts[{i}]", x) for i, x in enumerate(parts)]
        if not _is_int(part) or not 0 <= part < len(parts):
            raise ArgumentError(f"ConcatPart: part must be an index of the {len(parts)} "
                                f"parts, got {part!r}")
        return Node(self, [check_node(self.name, "joined", joined), *parts],
                    {"axis": _check_axis("ConcatPart", axis), "part": int(part)})

    def describe(self, node):
        return f"ConcatPart({short_name(node.inputs[0])}, part={node.attrs['part']})"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def _bounds(self, node, input_shapes) -> tuple[tuple[int, ...], int, int, int]:
        """(joined's shape, the axis, the part's start and stop along it)."""
        shapes = [tuple(s) for s in input_shapes]
        joined, axis = concat_shape(node, shapes[1:])
        if shapes[0] != joined:
            raise ShapeError(f"{node.name}: the joined tensor must have the concatenation's "
                             f"shape {joined} ({inputs_text(node, shapes)})")
        part = node.attrs["part"]
        start = sum(s[axis] for s in shapes[1:part + 1])
        return joined, axis, start, start + shapes[part + 1][axis]

    def infer_shape(self, node, input_shapes):
        self._bounds(node, input_shapes)
        return tuple(input_shapes[node.attrs["part"] + 1])

    def is_alias(self, node, input_shapes):
        return len(node.inputs) == 2

    def gradient(self, node, output_grad):
        # The adjoint puts the part back among zeros shaped like the other parts.
        parts, part = node.inputs[1:], node.attrs["part"]
        pieces = [output_grad if i == part else zeroslike_op(p) for i, p in enumerate(parts)]
        return [concat_op(pieces, node.attrs["axis"])] + [None] * len(parts)

    def kernel_spec(self, node, input_shapes, output_shape):
        joined, axis, start, stop = self._bounds(node, input_shapes)
        return KernelSpec("slice", (joined, axis, start, stop, 1))

    def reference(self, node, joined, *parts):
        axis = node.attrs["axis"] % joined.ndim
        offsets = np.cumsum([0] + [p.shape[axis] for p in parts])
        part = node.attrs["part"]
        return np.take(joined, np.arange(offsets[part], offsets[part + 1]), axis=axis)


concat_op = ConcatOp()
concat_part_op = ConcatPartOp()
