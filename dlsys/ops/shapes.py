"""Output-size rules, written once: the operators' shape rules and the kernel builders'
argument checks both call these.

Each function takes plain shapes and returns the output shape, or raises ``ShapeError`` with
a message that says what does not fit; callers prefix it with the node or argument names.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.graph import Node, Shape


def broadcast_shape(shape_a: Sequence[int], shape_b: Sequence[int]) -> Shape | None:
    """Numpy's broadcast of two shapes, or ``None`` when they are incompatible."""
    out = []
    for i in range(1, max(len(shape_a), len(shape_b)) + 1):
        a = shape_a[-i] if i <= len(shape_a) else 1
        b = shape_b[-i] if i <= len(shape_b) else 1
        if a != b and 1 not in (a, b):
            return None
        out.append(max(a, b))
    return tuple(reversed(out))


def broadcast_to_shape(shape: Sequence[int], to_shape: Sequence[int]) -> Shape:
    """``to_shape``, when ``shape`` broadcasts to it (new leading axes, size-1 axes)."""
    if broadcast_shape(shape, to_shape) != tuple(to_shape):
        raise ShapeError(f"cannot broadcast shape {tuple(shape)} to {tuple(to_shape)}")
    return tuple(to_shape)


def sum_to_shape(shape: Sequence[int], to_shape: Sequence[int]) -> Shape:
    """``to_shape``, when summing ``shape`` down to it is the adjoint of a broadcast."""
    if broadcast_shape(to_shape, shape) != tuple(shape):
        raise ShapeError(f"cannot sum shape {tuple(shape)} down to {tuple(to_shape)}")
    return tuple(to_shape)


def matmul_shape(shape_a: Sequence[int], trans_a: bool, shape_b: Sequence[int],
                 trans_b: bool) -> Shape:
    """The shape of ``op(A) @ op(B)`` as ``numpy.matmul``'s, ``op`` transposing the last two
    axes where asked: ``(m, n)`` for matrices; for operands of rank >= 3 the axes before the
    last two are batch axes, broadcast against each other (a matrix is shared by the whole
    batch), giving ``(*batch, m, n)``."""
    for which, shape in (("first", shape_a), ("second", shape_b)):
        if len(shape) < 2:
            raise ShapeError(f"the {which} operand must be a matrix or a stack of matrices, "
                             f"got shape {tuple(shape)}")
    ra, ca = shape_a[-2:]
    rb, cb = shape_b[-2:]
    m, k_a = (ca, ra) if trans_a else (ra, ca)
    k_b, n = (cb, rb) if trans_b else (rb, cb)
    if k_a != k_b:
        raise ShapeError(f"inner dimensions {k_a} and {k_b} differ")
    batch = broadcast_shape(shape_a[:-2], shape_b[:-2])
    if batch is None:
        raise ShapeError(f"batch dimensions {tuple(shape_a[:-2])} and {tuple(shape_b[:-2])} "
                         f"do not broadcast")
    return (*batch, m, n)


def normalize_axes(shape: Sequence[int], axes: Sequence[int] | None) -> tuple[int, ...]:
    """``axes`` of a tensor of ``shape`` as sorted non-negative ints (None: every axis)."""
    ndim = len(shape)
    if axes is None:
        return tuple(range(ndim))
    normal: list[int] = []
    for axis in axes:
        if not -ndim <= axis < ndim:
            raise ShapeError(f"axes {tuple(axes)}: axis {axis} is out of range for "
                             f"{ndim} dimensions")
        if axis % ndim in normal:
            raise ShapeError(f"axes {tuple(axes)} name axis {axis % ndim} more than once")
        normal.append(axis % ndim)
    return tuple(sorted(normal))


def reduce_source(shape: Sequence[int], axes: Sequence[int] | None,
                  keepdims: bool) -> tuple[int | None, ...]:
    """For each axis of a sum of ``shape`` over ``axes``, the input axis it indexes, or None
    for a size-1 axis standing where reduced axes were.

    Reduced axes are dropped, or kept with size 1 under ``keepdims``, as numpy does; when
    nothing is left the result is ``(1,)``, not numpy's ``()``, since every dlsys value has
    at least one axis. The kernels index through this map, so it is the one rule.
    """
    reduced = normalize_axes(shape, axes)
    if keepdims:
        return tuple(None if d in reduced else d for d in range(len(shape)))
    return tuple(d for d in range(len(shape)) if d not in reduced) or (None,)


def reduce_shape(shape: Sequence[int], axes: Sequence[int] | None, keepdims: bool) -> Shape:
    """The shape of a sum of ``shape`` over ``axes`` (see ``reduce_source``)."""
    return tuple(1 if d is None else shape[d] for d in reduce_source(shape, axes, keepdims))


def reduced_count(shape: Sequence[int], source: Sequence[int | None]) -> int:
    """How many elements of ``shape`` each output element of a reduction with ``source``
    (see ``reduce_source``) sums: the mean's divisor."""
    return math.prod(n for d, n in enumerate(shape) if d not in source)


Pair = tuple[int, int]


def window_pair(name: str, value, minimum: int) -> Pair:
    """A sliding window's ``kernel_size``, ``stride`` or ``padding`` as ``(height, width)``:
    an int for both or a pair of ints, each at least ``minimum``. The one reading of these
    arguments, shared by the operators and the kernel builders."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,) * 2
    if len(items) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                  for v in items):
        raise ArgumentTypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        bound = "positive" if minimum == 1 else "non-negative"
        raise ShapeError(f"{name} must be {bound}, got {value!r}")
    return (int(items[0]), int(items[1]))


def window_positions(size: int, window: int, stride: int, padding: int) -> int:
    """How many places a ``window`` sliding by ``stride`` takes over ``size`` elements with
    ``padding`` added at both ends: the output size of convolutions and pooling."""
    return (size + 2 * padding - window) // stride + 1


def _windows_shape(what: str, shape_x: Sequence[int], window: Pair, stride: Pair,
                   padding: Pair) -> Pair:
    """The (height, width) of every window position over NCHW images ``shape_x``."""
    if len(shape_x) != 4:
        raise ShapeError(f"images must be 4-d (N, C, H, W), got shape {tuple(shape_x)}")
    window_pair("stride", stride, 1)
    window_pair("padding", padding, 0)
    padded = (shape_x[2] + 2 * padding[0], shape_x[3] + 2 * padding[1])
    if window[0] > padded[0] or window[1] > padded[1]:
        raise ShapeError(f"{what} is larger than the image {tuple(shape_x[2:])} padded by "
                         f"{tuple(padding)}")
    return (window_positions(shape_x[2], window[0], stride[0], padding[0]),
            window_positions(shape_x[3], window[1], stride[1], padding[1]))


def conv2d_shape(shape_x: Sequence[int], shape_f: Sequence[int], stride: Pair = (1, 1),
                 padding: Pair = (0, 0)) -> Shape:
    """NCHW images ``x`` convolved with OIHW filters ``f``: (N, O, H', W')."""
    if len(shape_x) != 4 or len(shape_f) != 4:
        raise ShapeError("images and filters must be 4-d (NCHW, OIHW)")
    if shape_x[1] != shape_f[1]:
        raise ShapeError(f"images have {shape_x[1]} channels but filters expect {shape_f[1]}")
    size = _windows_shape(f"filter {tuple(shape_f)}", shape_x, tuple(shape_f[2:]), stride,
                          padding)
    return (shape_x[0], shape_f[0], *size)


def pool2d_shape(shape_x: Sequence[int], kernel: Pair, stride: Pair, padding: Pair) -> Shape:
    """NCHW images pooled over ``kernel`` windows: (N, C, H', W'). As in PyTorch, padding is
    at most half the window, so every window holds at least one element of the image."""
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ShapeError(f"padding {tuple(padding)} is more than half the pooling window "
                         f"{tuple(kernel)}")
    return (shape_x[0], shape_x[1], *_windows_shape(f"pooling window {tuple(kernel)}", shape_x,
                                                     kernel, stride, padding))


def global_pool_shape(shape_x: Sequence[int]) -> Shape:
    """NCHW images averaged over all of H and W: (N, C, 1, 1)."""
    if len(shape_x) != 4:
        raise ShapeError(f"images must be 4-d (N, C, H, W), got shape {tuple(shape_x)}")
    return (shape_x[0], shape_x[1], 1, 1)


def adjoint_shape(forward_shape: Sequence[int], shape_g: Sequence[int],
                  result: Sequence[int]) -> Shape:
    """``result``, when ``shape_g`` is the forward operator's output shape: the rule of an
    operator that takes a gradient ``g`` back to the shape of one of the forward inputs."""
    if tuple(shape_g) != tuple(forward_shape):
        raise ShapeError(f"the gradient must have the forward output's shape "
                         f"{tuple(forward_shape)}, got {tuple(shape_g)}")
    return tuple(result)


def row_matrix_shape(shape: Sequence[int]) -> Shape:
    """A (batch, classes) matrix, as softmax and its loss need."""
    if len(shape) != 2:
        raise ShapeError(f"must be a matrix (batch, classes), got shape {tuple(shape)}")
    return tuple(shape)


def inputs_text(node: Node, input_shapes: Sequence[Shape]) -> str:
    """``a (2, 3), b (3,)``: each input's name and shape, for error messages."""
    return ", ".join(f"{i.name} {tuple(s)}" for i, s in zip(node.inputs, input_shapes))


def apply_rule(node: Node, input_shapes: Sequence[Shape], rule: Callable[..., Shape],
               *args) -> Shape:
    """``rule(*args)``, with a ``ShapeError`` prefixed by the node and its inputs' shapes."""
    try:
        return tuple(rule(*args))
    except ShapeError as err:
        raise ShapeError(f"{node.name}: {err} ({inputs_text(node, input_shapes)})") from None


def same_shape(node: Node, input_shapes: Sequence[Shape]) -> Shape:
    """The common shape of all inputs."""
    if any(s != input_shapes[0] for s in input_shapes):
        raise ShapeError(f"{node.name}: inputs must have the same shape, got "
                         f"{inputs_text(node, input_shapes)}")
    return tuple(input_shapes[0])
