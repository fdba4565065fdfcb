"""Slicing: a run of indices ``[start, stop)`` along one axis (PyTorch's ``x.narrow``,
numpy's ``x[..., start:stop]``), and its adjoint, which writes a gradient into zeros of the
input's shape. Each is one injective kernel (``dlsys.kernels.layout``)."""

from __future__ import annotations

import numbers

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op, Shape, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_slice(where: str, axis, start, stop) -> tuple[int, int, int]:
    """``(axis, start, stop)`` as ints with ``0 <= start < stop``; the axis and ``stop``
    are checked against the shape by the shape rule, once it is known."""
    for name, value in (("axis", axis), ("start", start), ("stop", stop)):
        if not _is_int(value):
            raise ArgumentTypeError(f"{where}: {name} must be an int, got "
                                    f"{type(value).__name__} {value!r}")
    if not 0 <= start < stop:
        raise ArgumentError(f"{where}: the slice [{start}:{stop}) must have "
                            f"0 <= start < stop")
    return int(axis), int(start), int(stop)


def resolve_slice(node: Node, shape: Shape, input_shapes) -> int:
    """The node's axis, non-negative, once it is checked against ``shape``: the axis
    exists and ``stop`` is at most its size."""
    axis, start, stop = node.attrs["axis"], node.attrs["start"], node.attrs["stop"]
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"{node.name}: axis {axis} is out of range for rank {rank} "
                         f"({inputs_text(node, input_shapes)})")
    axis %= rank
    if stop > shape[axis]:
        raise ShapeError(f"{node.name}: the slice [{start}:{stop}) does not fit axis {axis} "
                         f"of size {shape[axis]} ({inputs_text(node, input_shapes)})")
    return axis


def _sliced(shape: Shape, axis: int, start: int, stop: int) -> Shape:
    return tuple(stop - start if d == axis else n for d, n in enumerate(shape))


def _whole_axis(node: Node, shape: Shape, input_shapes) -> bool:
    """Whether the node's slice spans its whole axis of ``shape``: then its output is its
    first input, a view that needs no kernel."""
    axis = resolve_slice(node, shape, input_shapes)
    return node.attrs["start"] == 0 and node.attrs["stop"] == shape[axis]


def _numpy_index(node: Node, ndim: int) -> tuple[slice, ...]:
    """The node's slice as a numpy index of ``ndim`` axes."""
    index = [slice(None)] * ndim
    index[node.attrs["axis"]] = slice(node.attrs["start"], node.attrs["stop"])
    return tuple(index)


class SliceOp(Op):
    """``x`` restricted to ``[start, stop)`` along ``axis`` (negative counts from the end):
    ``x.narrow(axis, start, stop - start)``."""

    name = "Slice"

    def __call__(self, x: Node, axis: int, start: int, stop: int) -> Node:
        x = check_node(self.name, "x", x)
        axis, start, stop = check_slice(f"Slice({short_name(x)})", axis, start, stop)
        return Node(self, [x], {"axis": axis, "start": start, "stop": stop})

    def describe(self, node):
        a = node.attrs
        return f"Slice({short_name(node.inputs[0])}, {a['axis']}, {a['start']}:{a['stop']})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        axis = resolve_slice(node, shape, input_shapes)
        return _sliced(shape, axis, node.attrs["start"], node.attrs["stop"])

    def is_alias(self, node, input_shapes):
        return _whole_axis(node, tuple(input_shapes[0]), input_shapes)

    def gradient(self, node, output_grad):
        a = node.attrs
        return [slice_gradient_op(output_grad, node.inputs[0], a["axis"], a["start"],
                                  a["stop"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        axis = resolve_slice(node, shape, input_shapes)
        return KernelSpec("slice", (shape, axis, node.attrs["start"], node.attrs["stop"]))

    def reference(self, node, x):
        return x[_numpy_index(node, x.ndim)]


class SliceGradientOp(Op):
    """The slice's adjoint: ``grad`` placed at ``[start, stop)`` along ``axis`` in zeros of
    ``like``'s shape (``like`` lends its shape only)."""

    name = "SliceGrad"

    def __call__(self, grad: Node, like: Node, axis: int, start: int, stop: int) -> Node:
        axis, start, stop = check_slice(f"SliceGrad({short_name(grad)})", axis, start, stop)
        return Node(self, [check_node(self.name, "grad", grad),
                           check_node(self.name, "like", like)],
                    {"axis": axis, "start": start, "stop": stop})

    def describe(self, node):
        a = node.attrs
        return f"SliceGrad({short_name(node.inputs[0])}, {a['axis']}, {a['start']}:{a['stop']})"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def infer_shape(self, node, input_shapes):
        grad, like = (tuple(s) for s in input_shapes)
        axis = resolve_slice(node, like, input_shapes)
        if grad != _sliced(like, axis, node.attrs["start"], node.attrs["stop"]):
            raise ShapeError(f"{node.name}: the gradient must have the slice's shape "
                             f"({inputs_text(node, input_shapes)})")
        return like

    def is_alias(self, node, input_shapes):
        return _whole_axis(node, tuple(input_shapes[1]), input_shapes)

    def gradient(self, node, output_grad):
        # Linear, and its adjoint is the slice again.
        a = node.attrs
        return [slice_op(output_grad, a["axis"], a["start"], a["stop"]), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        like = tuple(input_shapes[1])
        axis = resolve_slice(node, like, input_shapes)
        return KernelSpec("slice_gradient", (like, axis, node.attrs["start"],
                                             node.attrs["stop"]))

    def reference(self, node, grad, like):
        out = np.zeros_like(like)
        out[_numpy_index(node, like.ndim)] = grad
        return out


slice_op = SliceOp()
slice_gradient_op = SliceGradientOp()
