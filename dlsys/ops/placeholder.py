"""Placeholders: the values fed at run time (inputs, labels and parameters)."""

from __future__ import annotations

from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.graph import Node, Op


class PlaceholderOp(Op):
    name = "Placeholder"
    is_placeholder = True

    def __call__(self, name: str) -> Node:
        if not isinstance(name, str) or not name:
            raise ArgumentTypeError(f"a placeholder's name must be a non-empty string, "
                                    f"got {name!r}")
        return Node(self, [], name=name)

    def infer_shape(self, node, input_shapes):
        raise ShapeError(f"placeholder {node.name} has no value: feed it in feed_dict")

    def gradient(self, node, output_grad):
        return []


placeholder_op = PlaceholderOp()


def Variable(name: str) -> Node:  # noqa: N802 - the course API's name
    """A placeholder: a value fed through ``feed_dict`` at every run."""
    return placeholder_op(name)
