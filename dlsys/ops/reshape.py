"""Reshapes: a new shape over the same contiguous data, so no kernel and no copy.

Each is an alias (``is_alias``): the memory plan gives the output its input's storage and
the executor views that storage with the output's shape.
"""

from __future__ import annotations

import math

import numpy as np

from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, short_name


def resolve_shape(shape: tuple[int, ...], spec: tuple[int, ...]) -> tuple[int, ...]:
    """``spec`` made concrete for an input of ``shape``: each ``0`` is the input's size on
    that axis (ONNX Reshape's convention, so a spec can keep sizes known only at the feed,
    as (B, T, E) -> (0, 0, H, D)), then the one ``-1`` the size that holds as many elements
    as ``shape``."""
    if any(d == 0 for d in spec[len(shape):]):
        raise ShapeError(f"cannot reshape {shape} to {spec}: a 0 keeps the input's axis at "
                         f"its place, and {shape} has {len(shape)} axes")
    spec = tuple(shape[i] if d == 0 else d for i, d in enumerate(spec))
    known = math.prod(d for d in spec if d != -1)
    if -1 in spec:
        if known == 0 or math.prod(shape) % known:
            raise ShapeError(f"cannot reshape {shape} to {spec}")
        spec = tuple(math.prod(shape) // known if d == -1 else d for d in spec)
    if math.prod(spec) != math.prod(shape):
        raise ShapeError(f"cannot reshape {shape} ({math.prod(shape)} elements) to {spec} "
                         f"({math.prod(spec)} elements)")
    return spec


def check_reshape_spec(what: str, shape) -> tuple[int, ...]:
    """A reshape's target: positive ints, zeros (keep the input's size on that axis) and
    at most one -1; ``what`` names the call."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise ArgumentTypeError(f"{what}: the shape must be a tuple of ints, got {shape!r}")
    spec = tuple(shape)
    if not spec or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                           for d in spec):
        raise ArgumentTypeError(f"{what}: the shape must be a non-empty tuple of ints, "
                                f"got {shape!r}")
    if sum(d == -1 for d in spec) > 1 or any(d < -1 for d in spec):
        raise ShapeError(f"{what}: the shape takes positive sizes, zeros (the input's size "
                         f"on that axis) and at most one -1, got {spec}")
    return tuple(int(d) for d in spec)


class _AliasOp(Op):
    keeps_dtype = True  # the same elements: integer ids stay ids

    def is_alias(self, node, input_shapes):
        return True

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def gradient(self, node, output_grad):
        return [reshape_to_op(output_grad, node.inputs[0])] + [None] * (len(node.inputs) - 1)


class ReshapeOp(_AliasOp):
    """``x`` with shape ``shape`` (one ``-1`` stands for the remaining size, a ``0`` for
    the input's size on that axis)."""

    name = "Reshape"

    def __call__(self, x: Node, shape) -> Node:
        return Node(self, [x], {"shape": check_reshape_spec(f"Reshape({x.name})", shape)})

    def describe(self, node):
        return f"Reshape({short_name(node.inputs[0])}, {node.attrs['shape']})"

    def infer_shape(self, node, input_shapes):
        try:
            return resolve_shape(tuple(input_shapes[0]), node.attrs["shape"])
        except ShapeError as err:
            raise ShapeError(f"{node.name}: {err}") from None

    def reference(self, node, x):
        return x.reshape(resolve_shape(x.shape, node.attrs["shape"]))


class FlattenOp(_AliasOp):
    """``(N, ...) -> (N, rest)``: every axis after the first folded into one."""

    name = "Flatten"

    def __call__(self, x: Node) -> Node:
        return Node(self, [x])

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        return (shape[0], math.prod(shape[1:]))

    def reference(self, node, x):
        return x.reshape(len(x), -1)


class ReshapeToOp(_AliasOp):
    """``a`` reshaped to ``b``'s shape (``b`` lends its shape only): reshape's adjoint."""

    name = "ReshapeTo"

    def __call__(self, a: Node, b: Node) -> Node:
        return Node(self, [a, b])

    def infer_shape(self, node, input_shapes):
        shape, to_shape = (tuple(s) for s in input_shapes)
        if math.prod(shape) != math.prod(to_shape):
            raise ShapeError(f"{node.name}: cannot reshape {shape} to {to_shape}")
        return to_shape

    def reference(self, node, a, b):
        return a.reshape(b.shape)


reshape_op = ReshapeOp()
flatten_op = FlattenOp()
reshape_to_op = ReshapeToOp()
