"""Shape inference: every node's output shape, from the shapes of the fed placeholders."""

from __future__ import annotations

import math

from dlsys.errors import FeedError, ShapeError
from dlsys.graph import Node, Shape

# TVM indexes buffers with 32-bit integers by default; a larger tensor would wrap around.
MAX_ELEMENTS = 2**31 - 1


def infer_shapes(order: list[Node], feed_shapes: dict[Node, Shape]) -> dict[Node, Shape]:
    """Shapes of all nodes of ``order`` (a topological order) given the feeds' shapes.

    Each operator's shape rule raises ``ShapeError`` naming the node and its inputs' shapes,
    so a mismatch is reported before any kernel is compiled or run.
    """
    shapes: dict[Node, Shape] = {}
    for node in order:
        if node in feed_shapes:
            shape = tuple(int(d) for d in feed_shapes[node])
            # Caught here, naming the feed, rather than at the first node that reads it.
            if not shape or any(d <= 0 for d in shape):
                raise ShapeError(f"feed {node.name} has shape {shape}; feeds need at least one "
                                 f"dimension and no empty ones")
            shapes[node] = shape
            continue
        if node.op.is_placeholder:
            raise FeedError(f"placeholder {node.name} is not in feed_dict")
        shape = tuple(int(d) for d in node.op.infer_shape(node, [shapes[i] for i in node.inputs]))
        if any(d <= 0 for d in shape):
            raise ShapeError(f"{node.name}: inferred shape {shape} has an empty dimension")
        if math.prod(shape) > MAX_ELEMENTS:
            raise ShapeError(f"{node.name}: inferred shape {shape} has {math.prod(shape)} "
                             f"elements; dlsys kernels index at most {MAX_ELEMENTS}")
        shapes[node] = shape
    return shapes
