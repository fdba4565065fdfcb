"""What an ONNX node may ask for, checked at import before its converter runs.

- Attributes that index the axes of a node's first input (``axis``, ``perm``, a window's
  ``kernel_shape``, ``strides`` and ``pads``) against that input's rank: ONNX's shape
  inference does not refuse them, and a converter taking an axis modulo the rank would run
  on another axis than the file names.
- Every value's size against a bound implied by the model's declared inputs and its
  initializers, so that a few hundred bytes of attributes (a convolution's ``pads``) cannot
  make a run allocate gigabytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dlsys.onnx.reader import OnnxError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class RankRule:
    """The values an attribute may take for a first input of rank ``r``: ``accepts(value, r)``
    and, for the error, ``expects(r)`` in words."""

    name: str
    accepts: Callable[[object, int], bool]
    expects: Callable[[int], str]


def _ints(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) for v in value)


AXIS = RankRule("axis", lambda v, r: isinstance(v, int) and -r <= v < r,
                lambda r: f"an axis in [{-r}, {r - 1}]")
# Flatten's axis counts the axes before the split: r itself (everything in the rows) is one.
SPLIT = RankRule("split", lambda v, r: isinstance(v, int) and -r <= v <= r,
                 lambda r: f"an axis in [{-r}, {r}]")
PERMUTATION = RankRule("permutation", lambda v, r: _ints(v) and sorted(v) == list(range(r)),
                       lambda r: f"a permutation of the axes 0 to {r - 1}")
# A window over the axes after (N, C): one entry per spatial axis, or two for pads.
SPATIAL = RankRule("spatial", lambda v, r: _ints(v) and len(v) == r - 2,
                   lambda r: f"{r - 2} entries, one per spatial axis")
SPATIAL_PAIRS = RankRule("spatial_pairs", lambda v, r: _ints(v) and len(v) == 2 * (r - 2),
                         lambda r: f"{2 * (r - 2)} entries, a start and an end per spatial axis")


def check_ranks(where: str, rules: dict[str, RankRule], attrs: dict, rank: int | None) -> None:
    """Refuse any attribute in ``rules`` whose value does not fit a first input of ``rank``
    (not checked where ONNX's shape inference does not know the rank)."""
    if rank is None:
        return
    for name, rule in rules.items():
        if name in attrs and not rule.accepts(attrs[name], rank):
            raise OnnxError(f"{where}: {name}={attrs[name]} does not fit its input of rank "
                            f"{rank}, which takes {rule.expects(rank)}")


# The largest value an imported model may compute, per batch row: a generous multiple of what
# its inputs and initializers hold, and never less than a fixed floor. Layers widen their
# input (a VGG's first block holds 21 times its image, a U-Net's 64 channels at full
# resolution 21 times), so 256 times leaves room, while a 4x4 image padded by 20000 on each
# side (1.6e9 values, 6.4 GB, from a 200-byte file) is refused. The floor, 2**24 float32
# values (64 MiB a row), is for the small models whose inputs and weights are few. A run's
# memory is then at most the number of values times the bound times the batch.
SIZE_FACTOR = 256
SIZE_FLOOR = 1 << 24


def size_bound(input_rows: list[Shape], initializer_sizes: list[int]) -> int:
    """The most elements any value of a model may hold for one batch row of inputs of shapes
    ``input_rows`` (see ``SIZE_FACTOR``)."""
    held = sum(math.prod(shape) for shape in input_rows) + sum(initializer_sizes)
    return max(SIZE_FLOOR, SIZE_FACTOR * held)


def check_size(where: str, what: str, shape: Shape, bound: int) -> None:
    """Refuse a value of ``shape`` (for one batch row) larger than ``bound`` elements."""
    elements = math.prod(shape)
    if elements > bound:
        raise OnnxError(f"{where}: {what} of shape {shape} for one batch row would take "
                        f"{4 * elements} bytes; dlsys bounds each value of an imported model "
                        f"by {SIZE_FACTOR} times what its inputs and initializers hold, and "
                        f"at least {4 * SIZE_FLOOR} bytes ({4 * bound} bytes here)")
