"""Shape vectors with sizes unknown until run time: what a Shape node gives where ONNX's
shape inference does not know every size of its input (the batch of a model exported with
a free batch axis, whose channel shuffle reads ``x.size(0)``).

dlsys fixes shapes when it builds the graph, so such a vector cannot become a constant;
but exporters mostly pass its entries on whole, to a Reshape's target. The converters of
that arithmetic carry it as a ``PartialShape`` (Gather of constant positions, Slice,
Unsqueeze, Squeeze, Concat, an integer Cast), folding it back into a constant once every
entry it keeps is known; a Reshape takes it where one size is unknown and no -1 stands
beside it, as a -1 (the element count then fixes that size, whatever it is at run time).
Any other reader refuses it naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlsys.onnx.ops import Context, show_dims
from dlsys.onnx.reader import OnnxError


@dataclass(frozen=True)
class PartialShape:
    """Integer sizes, None where unknown until run time: a vector, or one entry of one
    (``scalar``, 0-d, as a Gather of one position gives it)."""

    sizes: tuple[int | None, ...]
    scalar: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return () if self.scalar else (len(self.sizes),)

    def describe(self) -> str:
        return show_dims(self.sizes)

    def __array__(self, dtype=None, copy=None):
        # Read as an array only where a graph returns it (a Shape as the graph's output):
        # there is no array before the run, so that is refused rather than guessed.
        raise OnnxError(f"the shape {self.describe()} has a size unknown until run time and "
                        f"is read as an array (a graph output?); dlsys fixes sizes when it "
                        f"builds the graph")


def partial_or_constant(sizes, scalar: bool = False) -> PartialShape | np.ndarray:
    """``sizes`` as a constant (int64, as ONNX's Shape gives it) where every one is known,
    else as a ``PartialShape``."""
    sizes = tuple(sizes)
    if None in sizes:
        return PartialShape(sizes, scalar)
    array = np.asarray(sizes, dtype=np.int64)
    return array.reshape(()) if scalar else array


def refuse(ctx: Context, i: int, value: PartialShape, what: str = "") -> Exception:
    """The error for a reader that cannot take a shape with sizes unknown until run time."""
    what = what or f"input {i}"
    return ctx.refuse(f"{what} ({ctx.node.input[i]!r}) is the shape {value.describe()}, "
                      f"with a size unknown until run time, and dlsys fixes sizes when it "
                      f"builds the graph (an InferenceSession does so for the fed shapes)")


def _entries(ctx: Context, i: int, value) -> list[int | None]:
    """A vector input of shape arithmetic (a ``PartialShape`` or a 1-d integer constant)
    as its entries."""
    if isinstance(value, PartialShape):
        return list(value.sizes) if not value.scalar else [value.sizes[0]]
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer) or array.ndim > 1:
        raise ctx.refuse(f"input {i} ({ctx.node.input[i]!r}) is a constant of type "
                         f"{array.dtype} and shape {array.shape} joined to a shape whose "
                         f"sizes are unknown until run time; dlsys joins integer vectors")
    return [int(v) for v in array.reshape(-1)]


def take(ctx: Context, value: PartialShape, indices, axis: int) -> PartialShape | np.ndarray:
    """Gather of constant positions of the vector."""
    if not isinstance(indices, np.ndarray) or not np.issubdtype(indices.dtype, np.integer) \
            or indices.ndim > 1 or axis not in (0, -1) or value.scalar:
        raise refuse(ctx, 0, value, "the data")
    size = len(value.sizes)
    flat = [int(i) for i in indices.reshape(-1)]
    wrong = [i for i in flat if not -size <= i < size]
    if wrong:
        raise ctx.refuse(f"index {wrong[0]} is out of range for the shape {value.describe()}")
    return partial_or_constant((value.sizes[i] for i in flat), scalar=indices.ndim == 0)


def unsqueeze(ctx: Context, value: PartialShape, axes: list[int]) -> PartialShape:
    """One entry made a vector of one (axes [0]); more axes would leave shape arithmetic."""
    if not value.scalar or axes not in ([0], [-1]):
        raise refuse(ctx, 0, value)
    return PartialShape(value.sizes)


def squeeze(ctx: Context, value: PartialShape, axes: list[int] | None) -> PartialShape:
    """A vector of one entry made that entry."""
    if value.scalar or len(value.sizes) != 1 or axes not in (None, [0], [-1]):
        raise refuse(ctx, 0, value)
    return PartialShape(value.sizes, scalar=True)


def concat(ctx: Context, values, axis: int) -> PartialShape | np.ndarray:
    """Vectors joined end to end."""
    if axis not in (0, -1):
        raise ctx.refuse(f"axis {axis}: shapes with sizes unknown until run time are "
                         f"vectors, joined along axis 0")
    sizes = [size for i, v in enumerate(values) for size in _entries(ctx, i, v)]
    return partial_or_constant(sizes)


def slice_(ctx: Context, value: PartialShape, starts: list[int], ends: list[int],
           axes: list[int], steps: list[int]) -> PartialShape | np.ndarray:
    """The vector's entries between ``starts[0]`` and ``ends[0]`` by ``steps[0]``: Python's
    slice clamps as ONNX's Slice does."""
    if value.scalar or len(starts) != 1 or axes not in ([0], [-1]) or steps[0] == 0:
        raise refuse(ctx, 0, value, "the data")
    return partial_or_constant(value.sizes[starts[0]:ends[0]:steps[0]])


def reshape_spec(ctx: Context, value: PartialShape) -> list[int]:
    """A Reshape's target with one size unknown until run time: that size as -1, which the
    element count fixes to the same size at every run (it is the only one not given)."""
    unknown = [i for i, d in enumerate(value.sizes) if d is None]
    if value.scalar or len(unknown) != 1 or -1 in value.sizes:
        raise refuse(ctx, 1, value, "the target shape")
    return [-1 if d is None else d for d in value.sizes]

