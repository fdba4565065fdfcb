"""Checks of the arguments users pass when they build operator nodes, so that a mistake is
refused where it is made, with a ``DlsysError`` naming the operator and the argument, rather
than surfacing later as an ``AttributeError`` deep in a pass."""

from __future__ import annotations

import numbers

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.graph import Node


def check_node(where: str, argument: str, value) -> Node:
    """``value`` when it is a graph node; ``where`` and ``argument`` name it in the error."""
    if not isinstance(value, Node):
        raise ArgumentTypeError(f"{where}: {argument} must be a graph Node, got "
                                f"{type(value).__name__} {value!r}")
    return value


def _is_int(value) -> bool:
    # bool is an int to Python, but ``axes=True`` is a mistake, not axis 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_axes(where: str, axes) -> tuple[int, ...] | None:
    """``axes`` as given by a user (an int, a tuple or list of ints, or None for all axes)
    as a tuple, or None. Negative axes stay negative: they count from the end of a shape
    that is known only at shape inference. Repeats are refused here when they are literal
    (``(1, 1)``); ``(1, -1)`` is a repeat only for 2-d inputs and is refused by the shape
    rule (``shapes.normalize_axes``)."""
    if axes is None:
        return None
    if _is_int(axes):
        return (int(axes),)
    if not isinstance(axes, (tuple, list)) or not all(_is_int(a) for a in axes):
        raise ArgumentTypeError(f"{where}: axes must be an int, a tuple of ints or None, "
                                f"got {axes!r}")
    axes = tuple(int(a) for a in axes)
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
        raise ArgumentError(f"{where}: axes {axes} name axis {repeated[0]} more than once")
    return axes
