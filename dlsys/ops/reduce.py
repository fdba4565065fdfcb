"""Sums, means and broadcasts: the operators that change a tensor's shape, by numpy's
broadcast rules or over given axes, and their adjoints."""

from __future__ import annotations

import numpy as np

from dlsys.checks import check_flag
from dlsys.errors import ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_axes, check_node
from dlsys.ops.shapes import (
    apply_rule,
    broadcast_to_shape,
    normalize_axes,
    reduce_shape,
    reduce_source,
    reduced_count,
    sum_to_shape,
)


def _sum_to(a: np.ndarray, shape: tuple) -> np.ndarray:
    lead = a.ndim - len(shape)
    a = a.sum(axis=tuple(range(lead))) if lead else a
    axes = tuple(d for d, n in enumerate(shape) if n == 1 and a.shape[d] != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a


class ReduceSumAxisZeroOp(Op):
    name = "ReduceSumAxisZero"

    def __call__(self, node: Node) -> Node:
        return Node(self, [node])

    def infer_shape(self, node, input_shapes):
        if len(input_shapes[0]) < 2:
            # Summing a vector to a scalar would give shape (); dlsys keeps at least one axis.
            raise ShapeError(f"{node.name}: input {node.inputs[0].name} needs at least 2 "
                             f"dimensions, got shape {tuple(input_shapes[0])}")
        return tuple(input_shapes[0][1:])

    def gradient(self, node, output_grad):
        return [broadcastto_op(output_grad, node.inputs[0])]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("reduce_sum_to", (tuple(input_shapes[0]), tuple(output_shape)))

    def reference(self, node, a):
        return a.sum(axis=0)


class _ToShapeOfOp(Op):
    """``op(a, b)`` whose output has ``b``'s shape: ``b`` lends its shape, never its values,
    and where ``a`` already has that shape the op is the identity (an alias, no kernel).
    ``shape_rule(shape, to_shape)`` checks the pair; ``kernel_kind`` computes it."""

    kernel_kind = ""

    @staticmethod
    def shape_rule(shape, to_shape):
        raise NotImplementedError

    def __call__(self, a: Node, b: Node) -> Node:
        return Node(self, [a, b])

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def is_alias(self, node, input_shapes):
        return tuple(input_shapes[0]) == tuple(input_shapes[1])

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self.shape_rule, *input_shapes)

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec(self.kernel_kind, (tuple(input_shapes[0]), tuple(output_shape)))


# Plane size (H * W) from which a per-channel sum uses the batch-norm schedule.
CHANNEL_SUM_MIN_PLANE = 512


class ReduceSumToOp(_ToShapeOfOp):
    """Sum ``a`` down to ``b``'s shape: the adjoint of broadcasting ``b``'s shape to ``a``'s."""

    name = "ReduceSumTo"
    kernel_kind = "reduce_sum_to"
    shape_rule = staticmethod(sum_to_shape)

    def kernel_spec(self, node, input_shapes, output_shape):
        shape, out = tuple(input_shapes[0]), tuple(output_shape)
        if len(shape) == 4 and out in ((shape[1], 1, 1), (1, shape[1], 1, 1)) \
                and shape[2] * shape[3] >= CHANNEL_SUM_MIN_PLANE:
            # Per channel of an NCHW tensor (a convolution's bias) with large planes: batch
            # norm's channel sums, which read each plane as one run. Measured on znver4 at
            # batch 256: 28 x 28 planes 2.2-3.4x faster than the generic sum (which gathers
            # across channel planes), 14 x 14 and 10 x 10 ones about 3x slower.
            return KernelSpec("channel_sum", (shape, out))
        return super().kernel_spec(node, input_shapes, output_shape)

    def gradient(self, node, output_grad):
        return [broadcastto_op(output_grad, node.inputs[0]), None]

    def reference(self, node, a, b):
        return _sum_to(a, b.shape)


class BroadcastToOp(_ToShapeOfOp):
    """``a`` broadcast to the shape of ``b`` (numpy rules: new leading axes, size-1 axes)."""

    name = "BroadcastTo"
    kernel_kind = "broadcast_to"
    shape_rule = staticmethod(broadcast_to_shape)
    broadcasts_input = True

    def gradient(self, node, output_grad):
        return [reducesumto_op(output_grad, node.inputs[0]), None]

    def reference(self, node, a, b):
        return np.broadcast_to(a, b.shape).copy()


reducesumaxiszero_op = ReduceSumAxisZeroOp()
reducesumto_op = ReduceSumToOp()
broadcastto_op = BroadcastToOp()


class ReduceAxesOp(Op):
    """The sum (or, with ``mean``, the mean) of ``x`` over ``axes``, as numpy's
    ``x.sum(axis=axes, keepdims=keepdims)``; a result with no axes left is ``(1,)``.

    ``axes`` may be an int, a tuple of ints (negative ones count from the end) or None for
    every axis; the shape rule resolves them once ``x``'s shape is known.
    """

    def __init__(self, name: str, mean: bool):
        self.name = name
        self.mean = mean

    def __call__(self, x: Node, axes=None, keepdims: bool = False) -> Node:
        return Node(self, [check_node(self.name, "x", x)], _axes_attrs(self.name, x, axes,
                                                                      keepdims))

    def describe(self, node):
        return _describe_axes(self.name, node, node.inputs[:1])

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, reduce_shape, input_shapes[0],
                          node.attrs["axes"], node.attrs["keepdims"])

    def is_alias(self, node, input_shapes):
        # No axis reduced (axes=() or only size-1 axes kept): the sum is its input.
        return self.infer_shape(node, input_shapes) == tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        expand = expandmean_op if self.mean else expand_op
        return [expand(output_grad, node.inputs[0], node.attrs["axes"], node.attrs["keepdims"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        source = reduce_source(shape, node.attrs["axes"], node.attrs["keepdims"])
        return KernelSpec("reduce_sum", (shape, source, _scale(self.mean, shape, source)))

    def reference(self, node, x):
        axes = normalize_axes(x.shape, node.attrs["axes"])
        reduce = np.mean if self.mean else np.sum
        out = reduce(x, axis=axes, keepdims=node.attrs["keepdims"])
        return np.reshape(out, reduce_shape(x.shape, axes, node.attrs["keepdims"]))


class ExpandAxesOp(Op):
    """``g``, the shape of ``x`` summed over ``axes`` (with ``keepdims``), spread back over
    those axes to ``x``'s shape: the adjoint of that sum, or with ``mean`` of that mean (each
    element divided by how many were averaged). ``x`` lends its shape, never its values."""

    def __init__(self, name: str, mean: bool):
        self.name = name
        self.mean = mean

    def __call__(self, g: Node, x: Node, axes=None, keepdims: bool = False) -> Node:
        inputs = [check_node(self.name, "g", g), check_node(self.name, "x", x)]
        return Node(self, inputs, _axes_attrs(self.name, x, axes, keepdims))

    def describe(self, node):
        return _describe_axes(self.name, node, node.inputs)

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def _rule(self, node, g_shape, shape):
        reduced = reduce_shape(shape, node.attrs["axes"], node.attrs["keepdims"])
        if tuple(g_shape) != reduced:
            raise ShapeError(f"g must have the reduced shape {reduced}")
        return tuple(shape)

    def infer_shape(self, node, input_shapes):
        return apply_rule(node, input_shapes, self._rule, node, *input_shapes)

    def is_alias(self, node, input_shapes):
        return tuple(input_shapes[0]) == tuple(input_shapes[1])

    def gradient(self, node, output_grad):
        reduce = mean_op if self.mean else sum_op
        return [reduce(output_grad, node.attrs["axes"], node.attrs["keepdims"]), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(output_shape)
        source = reduce_source(shape, node.attrs["axes"], node.attrs["keepdims"])
        return KernelSpec("expand_axes", (tuple(input_shapes[0]), shape, source,
                                          _scale(self.mean, shape, source)))

    def reference(self, node, g, x):
        source = reduce_source(x.shape, node.attrs["axes"], node.attrs["keepdims"])
        kept = [d for d in source if d is not None]
        # g's axes, in x's order with a size-1 axis for each reduced one, then broadcast.
        g = np.reshape(g, [x.shape[d] if d in kept else 1 for d in range(x.ndim)])
        count = reduced_count(x.shape, source) if self.mean else 1
        return np.broadcast_to(g, x.shape) / count


def _scale(mean: bool, shape, source) -> float:
    """The factor of each term: 1 for a sum, 1 over the count averaged for a mean."""
    return 1.0 / reduced_count(shape, source) if mean else 1.0


def _axes_attrs(name: str, x: Node, axes, keepdims) -> dict:
    where = f"{name}({short_name(x)})"
    return {"axes": check_axes(where, axes), "keepdims": check_flag(f"{where}: keepdims",
                                                                   keepdims)}


def _describe_axes(name: str, node: Node, inputs) -> str:
    axes, keepdims = node.attrs["axes"], node.attrs["keepdims"]
    args = [short_name(i) for i in inputs]
    args += [f"axes={axes}"] if axes is not None else []
    args += ["keepdims=True"] if keepdims else []
    return f"{name}({', '.join(args)})"


sum_op = ReduceAxesOp("Sum", mean=False)
mean_op = ReduceAxesOp("Mean", mean=True)
expand_op = ExpandAxesOp("ExpandSum", mean=False)
expandmean_op = ExpandAxesOp("ExpandMean", mean=True)
