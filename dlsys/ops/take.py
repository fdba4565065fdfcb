"""Taking indices fixed by the graph along one axis (numpy's ``take``; ONNX's Gather with
constant indices: a token's row, a range of positions, a reversal), and its adjoint, which
adds each taken element's gradient back where it was taken from.

The indices are attributes, not a tensor, so the kernels (``dlsys.kernels.gather``) are
built for them: they are read as runs (a range, a reversal, one index each make one), and a
list of scattered indices is refused beyond ``MAX_RUNS`` runs. Indices read at run time
are the embedding's (``dlsys.ops.embedding``).
"""

from __future__ import annotations

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text
from dlsys.ops.slicing import _is_int

# Each output element walks a chain of this many runs at most: more would make the kernel's
# code, and each element's work, grow with the number of indices.
MAX_RUNS = 256


def index_runs(indices: tuple[int, ...]) -> tuple[tuple[int, int, int, int], ...]:
    """``indices`` (non-negative) as runs ``(out_start, in_start, step, length)`` of equal
    nonzero steps, each as long as it goes, in order."""
    runs, position = [], 0
    while position < len(indices):
        length, step = 1, 0
        if position + 1 < len(indices) and indices[position + 1] != indices[position]:
            step = indices[position + 1] - indices[position]
            while position + length < len(indices) and \
                    indices[position + length] - indices[position + length - 1] == step:
                length += 1
        runs.append((position, indices[position], step or 1, length))
        position += length
    return tuple(runs)


def _check_indices(where: str, indices) -> tuple[int, ...]:
    if isinstance(indices, np.ndarray):
        indices = indices.reshape(-1).tolist()
    if not isinstance(indices, (tuple, list)) or not indices \
            or not all(_is_int(i) for i in indices):
        raise ArgumentTypeError(f"{where}: indices must be a non-empty tuple of ints, got "
                                f"{indices!r}")
    return tuple(int(i) for i in indices)


def _resolve(node: Node, shape, input_shapes) -> tuple[int, tuple[int, ...]]:
    """The node's axis and indices, non-negative, checked against ``shape`` (the table's)."""
    axis, indices = node.attrs["axis"], node.attrs["indices"]
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"{node.name}: axis {axis} is out of range for rank {rank} "
                         f"({inputs_text(node, input_shapes)})")
    axis %= rank
    size = shape[axis]
    wrong = [i for i in indices if not -size <= i < size]
    if wrong:
        raise ShapeError(f"{node.name}: index {wrong[0]} is out of range for axis {axis} of "
                         f"size {size} ({inputs_text(node, input_shapes)})")
    return axis, tuple(i % size for i in indices)


def _runs(node: Node, indices: tuple[int, ...]):
    runs = index_runs(indices)
    if len(runs) > MAX_RUNS:
        raise ArgumentError(f"{node.name}: the {len(indices)} indices fall into {len(runs)} "
                            f"runs of equal steps; dlsys takes at most {MAX_RUNS}")
    return runs


class TakeOp(Op):
    """``numpy.take(x, indices, axis)`` for a flat list of ``indices`` fixed by the graph
    (negative ones count from the end of the axis): axis ``axis`` of the output has
    ``len(indices)`` entries."""

    name = "Take"

    def __call__(self, x: Node, indices, axis: int) -> Node:
        x = check_node(self.name, "x", x)
        where = f"Take({short_name(x)})"
        if not _is_int(axis):
            raise ArgumentTypeError(f"{where}: axis must be an int, got {axis!r}")
        return Node(self, [x], {"axis": int(axis), "indices": _check_indices(where, indices)})

    def describe(self, node):
        indices = node.attrs["indices"]
        shown = indices if len(indices) <= 4 else f"{len(indices)} indices"
        return f"Take({short_name(node.inputs[0])}, {shown}, axis={node.attrs['axis']})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        axis, indices = _resolve(node, shape, input_shapes)
        return tuple(len(indices) if d == axis else n for d, n in enumerate(shape))

    def is_alias(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        axis, indices = _resolve(node, shape, input_shapes)
        return indices == tuple(range(shape[axis]))

    def gradient(self, node, output_grad):
        return [take_gradient_op(output_grad, node.inputs[0], node.attrs["indices"],
                                 node.attrs["axis"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        axis, indices = _resolve(node, shape, input_shapes)
        return KernelSpec("take", (shape, axis, _runs(node, indices)))

    def reference(self, node, x):
        return np.take(x, node.attrs["indices"], axis=node.attrs["axis"])


class TakeGradientOp(Op):
    """The take's adjoint: zeros of ``like``'s shape (``like`` lends its shape only) into
    which each slice of ``grad`` is added at the index it was taken from."""

    name = "TakeGrad"

    def __call__(self, grad: Node, like: Node, indices, axis: int) -> Node:
        where = f"TakeGrad({short_name(grad)})"
        return Node(self, [check_node(self.name, "grad", grad),
                           check_node(self.name, "like", like)],
                    {"axis": int(axis), "indices": _check_indices(where, indices)})

    def describe(self, node):
        return f"TakeGrad({short_name(node.inputs[0])}, axis={node.attrs['axis']})"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def infer_shape(self, node, input_shapes):
        grad, like = (tuple(s) for s in input_shapes)
        axis, indices = _resolve(node, like, input_shapes)
        taken = tuple(len(indices) if d == axis else n for d, n in enumerate(like))
        if grad != taken:
            raise ShapeError(f"{node.name}: the gradient must have the take's shape {taken} "
                             f"({inputs_text(node, input_shapes)})")
        return like

    def is_alias(self, node, input_shapes):
        like = tuple(input_shapes[1])
        axis, indices = _resolve(node, like, input_shapes)
        return indices == tuple(range(like[axis]))

    def gradient(self, node, output_grad):
        # Linear in grad; its adjoint is the take again.
        return [take_op(output_grad, node.attrs["indices"], node.attrs["axis"]), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        like = tuple(input_shapes[1])
        axis, indices = _resolve(node, like, input_shapes)
        return KernelSpec("take_gradient", (like, axis, _runs(node, indices)))

    def reference(self, node, grad, like):
        axis = node.attrs["axis"] % like.ndim
        out = np.zeros_like(like)
        moved, taken = np.moveaxis(out, axis, 0), np.moveaxis(grad, axis, 0)
        np.add.at(moved, np.asarray(node.attrs["indices"]) % like.shape[axis], taken)
        return out


take_op = TakeOp()
take_gradient_op = TakeGradientOp()
