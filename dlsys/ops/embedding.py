"""Embeddings: rows of a table picked by integer ids, and the scatter-add that is their
gradient. The ids are an index input (``Op.index_inputs``): fed as int32 or int64 arrays,
checked against the table's rows where they are fed.

A lookup built with ``from_end=True`` also takes negative ids, counted from the end of the
table as ``numpy.take`` and ONNX's Gather count them (``-1`` the last row); dlsys's own
embeddings leave it off, so that a negative token id stays an error."""

from __future__ import annotations

import numpy as np

from dlsys.errors import GradientError, ShapeError
from dlsys.graph import IndexBounds, Node, Op, short_name
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_node
from dlsys.ops.shapes import inputs_text


def _check_table(node: Node, input_shapes) -> tuple[int, int]:
    table = tuple(input_shapes[0])
    if len(table) != 2:
        raise ShapeError(f"{node.name}: the embedding table must be (num_embeddings, "
                         f"embedding_dim), got {table} ({inputs_text(node, input_shapes)})")
    return table


def _bounds(node: Node, rows: int) -> IndexBounds:
    """The ids a table of ``rows`` rows takes: ``[0, rows)``, or ``[-rows, rows)`` for a
    lookup built ``from_end``."""
    return IndexBounds(rows, start=-rows if node.attrs.get("from_end") else 0)


class EmbeddingOp(Op):
    """``weight[ids]``: for ids of any shape, ``ids.shape + (embedding_dim,)``, as PyTorch's
    ``F.embedding(ids, weight)``; with ``from_end=True`` a negative id ``i`` picks row
    ``i + num_embeddings``, as ``numpy.take(weight, ids, axis=0)`` does."""

    name = "Embedding"
    index_inputs = (1,)

    def __call__(self, weight: Node, ids: Node, from_end: bool = False) -> Node:
        return Node(self, [check_node(self.name, "weight", weight),
                           check_node(self.name, "ids", ids)],
                    {"from_end": bool(from_end)} if from_end else None)

    def infer_shape(self, node, input_shapes):
        _, dim = _check_table(node, input_shapes)
        return (*input_shapes[1], dim)

    def index_bounds(self, node, shapes):
        return {1: _bounds(node, shapes[node.inputs[0]][0])}

    def gradient(self, node, output_grad):
        weight, ids = node.inputs
        return [embedding_gradient_op(output_grad, ids, weight,
                                      node.attrs.get("from_end", False)), None]

    def index_kernel_spec(self, node, input_shapes, output_shape, index_dtypes):
        return KernelSpec("embedding", (tuple(input_shapes[0]), tuple(input_shapes[1]),
                                        index_dtypes[0], node.attrs.get("from_end", False)))

    def reference(self, node, weight, ids):
        return weight[ids]


class EmbeddingGradientOp(Op):
    """The embedding table's gradient: ``grad``'s rows added into the rows their ids pick,
    a repeated id accumulating in position order (the same sum, bit for bit, every run).
    ``weight`` only lends its shape; ``from_end`` reads negative ids as the lookup did."""

    name = "EmbeddingGrad"
    index_inputs = (1,)

    def __call__(self, grad: Node, ids: Node, weight: Node, from_end: bool = False) -> Node:
        return Node(self, [grad, ids, weight],
                    {"from_end": bool(from_end)} if from_end else None)

    def describe(self, node):
        grad, ids, _ = node.inputs
        return f"EmbeddingGrad({short_name(grad)}, {short_name(ids)})"

    def kernel_inputs(self, node):
        return node.inputs[:2]

    def infer_shape(self, node, input_shapes):
        grad, ids, table = (tuple(s) for s in input_shapes)
        _, dim = _check_table(node, [table])
        if grad != (*ids, dim):
            raise ShapeError(f"{node.name}: the gradient must have the ids' shape plus "
                             f"({dim},), got {inputs_text(node, input_shapes)}")
        return table

    def index_bounds(self, node, shapes):
        return {1: _bounds(node, shapes[node.inputs[2]][0])}

    def gradient(self, node, output_grad):
        raise GradientError(f"{node.name}: the embedding's gradient has no gradient in dlsys")

    def index_kernel_spec(self, node, input_shapes, output_shape, index_dtypes):
        return KernelSpec("embedding_gradient", (tuple(output_shape), tuple(input_shapes[1]),
                                                 index_dtypes[0],
                                                 node.attrs.get("from_end", False)))

    def reference(self, node, grad, ids, weight):
        out = np.zeros_like(weight)
        np.add.at(out, ids.reshape(-1), grad.reshape(-1, weight.shape[1]))
        return out


embedding_op = EmbeddingOp()
embedding_gradient_op = EmbeddingGradientOp()
