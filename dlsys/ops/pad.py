"""Padding a tensor on any of its axes (numpy's ``pad``; ONNX's Pad), with a constant, with
copies of the edge elements, or with the elements mirrored about the edges, and its adjoint.

Both are one injective kernel of the layout family: the pad reads, for each output
element, the input element it copies; the adjoint sums, for each input element, the
gradient of every output element that copied it.
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
from dlsys.ops.slicing import _is_int

PAD_MODES = ("constant", "edge", "reflect")


def check_pads(where: str, pads) -> tuple[tuple[int, int], ...]:
    """``pads`` as ``((before, after), ...)``, one pair of non-negative ints per axis."""
    try:
        pairs = tuple((before, after) for before, after in pads)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{where}: pads must be one (before, after) pair per axis, "
                                f"got {pads!r}") from None
    if not pairs or not all(_is_int(v) for pair in pairs for v in pair):
        raise ArgumentTypeError(f"{where}: pads must be non-empty pairs of ints, got {pads!r}")
    if any(v < 0 for pair in pairs for v in pair):
        raise ArgumentError(f"{where}: pads must not be negative, got {pairs} (cut a tensor "
                            f"with a slice)")
    return tuple((int(b), int(e)) for b, e in pairs)


def _check(node: Node, input_shapes) -> tuple[int, ...]:
    """The unpadded shape (the first input's for a pad), checked against the pads."""
    shape = tuple(input_shapes[0])
    pads, mode = node.attrs["pads"], node.attrs["mode"]
    if len(pads) != len(shape):
        raise ShapeError(f"{node.name}: {len(pads)} pairs of pads for rank {len(shape)} "
                         f"({inputs_text(node, input_shapes)})")
    if mode == "reflect":
        # A mirror copies each element at most once on each side (ONNX's and numpy's
        # repeated reflection for wider pads is not supported).
        wide = [d for d, (n, (b, e)) in enumerate(zip(shape, pads)) if n > 1 and max(b, e) >= n]
        if wide:
            raise ShapeError(f"{node.name}: reflect pads of axis {wide[0]} must be below its "
                             f"size {shape[wide[0]]}, got {pads[wide[0]]} "
                             f"({inputs_text(node, input_shapes)})")
    return shape


def _padded(shape, pads) -> tuple[int, ...]:
    return tuple(n + b + e for n, (b, e) in zip(shape, pads))


class PadOp(Op):
    """``numpy.pad(x, pads, mode)``: ``pads`` holds ``(before, after)`` per axis; ``mode``
    is ``"constant"`` (filled with ``value``), ``"edge"`` (the edge element repeated) or
    ``"reflect"`` (mirrored about the edge element, which is not repeated)."""

    name = "Pad"

    def __call__(self, x: Node, pads, mode: str = "constant", value: float = 0.0) -> Node:
        x = check_node(self.name, "x", x)
        where = f"Pad({short_name(x)})"
        if mode not in PAD_MODES:
            raise ArgumentError(f"{where}: mode must be one of {PAD_MODES}, got {mode!r}")
        if not isinstance(value, numbers.Real) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise ArgumentTypeError(f"{where}: value must be a finite number, got {value!r}")
        return Node(self, [x], {"pads": check_pads(where, pads), "mode": mode,
                                "value": float(value)})

    def describe(self, node):
        a = node.attrs
        return f"Pad({short_name(node.inputs[0])}, {list(a['pads'])}, {a['mode']})"

    def infer_shape(self, node, input_shapes):
        return _padded(_check(node, input_shapes), node.attrs["pads"])

    def is_alias(self, node, input_shapes):
        return not any(b or e for b, e in node.attrs["pads"])

    def gradient(self, node, output_grad):
        return [pad_gradient_op(output_grad, node.inputs[0], node.attrs["pads"],
                                node.attrs["mode"])]

    def kernel_spec(self, node, input_shapes, output_shape):
        a = node.attrs
        return KernelSpec("pad", (_check(node, input_shapes), a["pads"], a["mode"], a["value"]))

    def reference(self, node, x):
        a = node.attrs
        extra = {"constant_values": a["value"]} if a["mode"] == "constant" else {}
        return np.pad(x, a["pads"], mode=a["mode"], **extra)


class PadGradientOp(Op):
    """The pad's adjoint: for each element of ``like`` (the unpadded input, which lends its
    shape only), the sum of ``grad`` over the padded output's elements that copy it."""

    name = "PadGrad"

    def __call__(self, grad: Node, like: Node, pads, mode: str) -> Node:
        where = f"PadGrad({short_name(grad)})"
        if mode not in PAD_MODES:
            raise ArgumentError(f"{where}: mode must be one of {PAD_MODES}, got {mode!r}")
        return Node(self, [check_node(self.name, "grad", grad),
                           check_node(self.name, "like", like)],
                    {"pads": check_pads(where, pads), "mode": mode})

    def describe(self, node):
        return f"PadGrad({short_name(node.inputs[0])}, {node.attrs['mode']})"

    def kernel_inputs(self, node):
        return node.inputs[:1]

    def infer_shape(self, node, input_shapes):
        grad, like = (tuple(s) for s in input_shapes)
        _check(node, [like])
        if grad != _padded(like, node.attrs["pads"]):
            raise ShapeError(f"{node.name}: the gradient must have the padded shape "
                             f"{_padded(like, node.attrs['pads'])} "
                             f"({inputs_text(node, input_shapes)})")
        return like

    def is_alias(self, node, input_shapes):
        return not any(b or e for b, e in node.attrs["pads"])

    def gradient(self, node, output_grad):
        # Linear in grad; its adjoint is the pad with zeros in the constant mode.
        return [pad_op(output_grad, node.attrs["pads"], node.attrs["mode"], 0.0), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        a = node.attrs
        return KernelSpec("pad_gradient", (tuple(output_shape), a["pads"], a["mode"]))

    def reference(self, node, grad, like):
        # Each input element's gradient: pad an indicator of it, read where grad lands.
        pads, mode = node.attrs["pads"], node.attrs["mode"]
        index = np.arange(like.size).reshape(like.shape)
        extra = {"constant_values": -1} if mode == "constant" else {}
        source = np.pad(index, pads, mode=mode, **extra)
        out = np.zeros(like.size, dtype=grad.dtype)
        kept = source >= 0
        np.add.at(out, source[kept], grad[kept])
        return out.reshape(like.shape)


pad_op = PadOp()
pad_gradient_op = PadGradientOp()
