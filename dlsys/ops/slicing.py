"""Slicing: a run of indices ``[start, stop)`` along one axis (PyTorch's ``x.narrow``,
numpy's ``x[..., start:stop]``), every ``step``-th of them (``x[..., start:stop:step]``, a
negative step walking backwards), and its adjoint, which writes a gradient into zeros of
the input's shape. Each is one injective kernel (``dlsys.kernels.layout``)."""

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


def check_slice(where: str, axis, start, stop, step=1) -> tuple[int, int, int, int]:
    """``(axis, start, stop, step)`` as ints with ``0 <= start < stop`` for a positive step,
    ``-1 <= stop < start`` for a negative one (a stop of -1 runs down to index 0); the axis
    and the bounds are checked against the shape by the shape rule, once it is known."""
    for name, value in (("axis", axis), ("start", start), ("stop", stop), ("step", step)):
        if not _is_int(value):
            raise ArgumentTypeError(f"{where}: {name} must be an int, got "
                                    f"{type(value).__name__} {value!r}")
    if step == 0:
        raise ArgumentError(f"{where}: the step must not be 0")
    if step > 0 and not 0 <= start < stop:
        raise ArgumentError(f"{where}: the slice [{start}:{stop}) must have "
                            f"0 <= start < stop")
    if step < 0 and not -1 <= stop < start:
        raise ArgumentError(f"{where}: the slice [{start}:{stop}:{step}) walks backwards, "
                            f"so it must have -1 <= stop < start")
    return int(axis), int(start), int(stop), int(step)


def slice_length(start: int, stop: int, step: int) -> int:
    """How many indices ``range(start, stop, step)`` holds (at least one, once checked)."""
    return len(range(start, stop, step))


def resolve_slice(node: Node, shape: Shape, input_shapes) -> int:
    """The node's axis, non-negative, once it is checked against ``shape``: the axis
    exists and ``stop`` is at most its size."""
    axis, start, stop = node.attrs["axis"], node.attrs["start"], node.attrs["stop"]
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"{node.name}: axis {axis} is out of range for rank {rank} "
                         f"({inputs_text(node, input_shapes)})")
    axis %= rank
    if max(start, stop) > shape[axis] or (node.attrs["step"] < 0 and start >= shape[axis]):
        raise ShapeError(f"{node.name}: the slice [{_bounds_text(node.attrs)}) does not fit "
                         f"axis {axis} of size {shape[axis]} "
                         f"({inputs_text(node, input_shapes)})")
    return axis


def _bounds_text(attrs: dict) -> str:
    step = attrs["step"]
    return f"{attrs['start']}:{attrs['stop']}" + (f":{step}" if step != 1 else "")


def _sliced(shape: Shape, axis: int, attrs: dict) -> Shape:
    length = slice_length(attrs["start"], attrs["stop"], attrs["step"])
    return tuple(length if d == axis else n for d, n in enumerate(shape))


def _whole_axis(node: Node, shape: Shape, input_shapes) -> bool:
    """Whether the node's slice spans its whole axis of ``shape`` in order: then its output
    is its first input, a view that needs no kernel."""
    axis = resolve_slice(node, shape, input_shapes)
    a = node.attrs
    return a["start"] == 0 and a["stop"] == shape[axis] and a["step"] == 1


def _kernel_params(node: Node, shape: Shape, axis: int) -> tuple:
    a = node.attrs
    return (shape, axis, a["start"], a["stop"], a["step"])


def _numpy_index(node: Node, ndim: int) -> tuple[slice, ...]:
    """The node's slice as a numpy index of ``ndim`` axes."""
    a = node.attrs
    index = [slice(None)] * ndim
    # numpy reads a stop of -1 as the last index; a backward run to index 0 stops at None.
    index[a["axis"]] = slice(a["start"], None if a["stop"] < 0 else a["stop"], a["step"])
    return tuple(index)


class SliceOp(Op):
    """``x`` restricted to ``[start, stop)`` along ``axis`` (negative counts from the end):
    ``x.narrow(axis, start, stop - start)``; with a ``step``, every ``step``-th index of the
    run, ``x[..., start:stop:step]`` (a negative step walks from ``start`` down to ``stop``,
    exclusive; a stop of -1 runs down to index 0)."""

    name = "Slice"

    def __call__(self, x: Node, axis: int, start: int, stop: int, step: int = 1) -> Node:
        x = check_node(self.name, "x", x)
        axis, start, stop, step = check_slice(f"Slice({short_name(x)})", axis, start, stop,
                                              step)
        return Node(self, [x], {"axis": axis, "start": start, "stop": stop, "step": step})

    def describe(self, node):
        return f"Slice({short_name(node.inputs[0])}, {node.attrs['axis']}, " \
               f"{_bounds_text(node.attrs)})"

    def infer_shape(self, node, input_shapes):
        shape = tuple(input_shapes[0])
        axis = resolve_slice(node, shape, input_shapes)
        return _sliced(shape, axis, node.attrs)

    def is_alias(self, node, input_shapes):
        return _whole_axis(node, tuple(input_shapes[0]), input_shapes)

    def gradient(self, node, output_grad):
        a = node.attrs
        return [slice_gradient_op(output_grad, node.inputs[0], a["axis"], a["start"],
                                  a["stop"], a["step"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        shape = tuple(input_shapes[0])
        axis = resolve_slice(node, shape, input_shapes)
        return KernelSpec("slice", _kernel_params(node, shape, axis))

    def reference(self, node, x):
        return x[_numpy_index(node, x.ndim)]


class SliceGradientOp(Op):
    """The slice's adjoint: ``grad`` placed at ``[start:stop:step]`` along ``axis`` in zeros
    of ``like``'s shape (``like`` lends its shape only)."""

    name = "SliceGrad"

    def __call__(self, grad: Node, like: Node, axis: int, start: int, stop: int,
                 step: int = 1) -> Node:
        axis, start, stop, step = check_slice(f"SliceGrad({short_name(grad)})", axis, start,
                                              stop, step)
        return Node(self, [check_node(self.name, "grad", grad),
                           check_node(self.name, "like", like)],
                    {"axis": axis, "start": start, "stop": stop, "step": step})

    def describe(self, node):
        return f"SliceGrad({short_name(node.inputs[0])}, {node.attrs['axis']}, " \
               f"{_bounds_text(node.attrs)})"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def infer_shape(self, node, input_shapes):
        grad, like = (tuple(s) for s in input_shapes)
        axis = resolve_slice(node, like, input_shapes)
        if grad != _sliced(like, axis, node.attrs):
            raise ShapeError(f"{node.name}: the gradient must have the slice's shape "
                             f"({inputs_text(node, input_shapes)})")
        return like

    def is_alias(self, node, input_shapes):
        return _whole_axis(node, tuple(input_shapes[1]), input_shapes)

    def gradient(self, node, output_grad):
        # Linear, and its adjoint is the slice again.
        a = node.attrs
        return [slice_op(output_grad, a["axis"], a["start"], a["stop"], a["step"]), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        like = tuple(input_shapes[1])
        axis = resolve_slice(node, like, input_shapes)
        return KernelSpec("slice_gradient", _kernel_params(node, like, axis))

    def reference(self, node, grad, like):
        out = np.zeros_like(like)
        out[_numpy_index(node, like.ndim)] = grad
        return out


slice_op = SliceOp()
slice_gradient_op = SliceGradientOp()
