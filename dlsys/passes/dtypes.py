"""Element types: which values are integer indices and which are floating-point.

Every value of a dlsys graph is of the executor's floating-point type, except the integer
indices some operators read (token ids, class indices; ``Op.index_inputs``). Those come
from placeholders fed int32 or int64 arrays, possibly reshaped on the way (``keeps_dtype``),
and keep the type they were fed in: an index is never rounded through a float.
"""

from __future__ import annotations

from dlsys.errors import DtypeError
from dlsys.graph import IndexBounds, Node, Shape, short_name

INDEX_DTYPES = ("int32", "int64")


def _index_source(node: Node) -> Node:
    """The value ``node`` passes on unchanged: the placeholder behind its reshapes."""
    while node.op.keeps_dtype and not node.op.is_placeholder and node.inputs:
        node = node.inputs[0]
    return node


def index_placeholders(order: list[Node], optional: bool = False) -> dict[Node, Node]:
    """Each placeholder read as integer indices, mapped to the first node reading it so;
    with ``optional``, those read through ``optional_index_inputs`` instead, which are
    indices only when fed an integer array.

    A parameter (which holds a floating-point tensor) is left out: ``infer_dtypes`` refuses
    it, naming the node that would read it as indices.
    """
    found: dict[Node, Node] = {}
    for node in order:
        for i in (node.op.optional_index_inputs if optional else node.op.index_inputs):
            source = _index_source(node.inputs[i])
            if source.op.is_placeholder and not source.op.holds_value:
                found.setdefault(source, node)
    return found


def infer_dtypes(order: list[Node], feed_dtypes: dict[Node, str],
                 float_dtype: str) -> dict[Node, str]:
    """The element type of every node: ``feed_dtypes`` for the index placeholders, their
    reshapes' for values that keep it, ``float_dtype`` for everything else.

    Refuses a graph that reads integer ids as floating-point values (``matmul(ids, W)``) or
    a floating-point value as indices, naming the node and the input.
    """
    dtypes: dict[Node, str] = {}
    for node in order:
        if node.op.is_placeholder:
            dtypes[node] = feed_dtypes.get(node, float_dtype)
            continue
        index_inputs = set(node.op.index_inputs)
        either = set(node.op.optional_index_inputs)
        for i, x in enumerate(node.inputs):
            integer = dtypes[x] in INDEX_DTYPES
            if i in either:
                continue
            if i in index_inputs and not integer:
                raise DtypeError(
                    f"{node.name}: input {i} ({short_name(x)}) holds integer indices, but "
                    f"{short_name(x)} is a {dtypes[x]} value; feed the indices as an int32 or "
                    f"int64 array through a placeholder")
            if integer and i not in index_inputs and not (node.op.keeps_dtype and i == 0):
                raise DtypeError(
                    f"{node.name}: input {i} ({short_name(x)}) is integer indices "
                    f"({dtypes[x]}), which {node.op.name} would read as {float_dtype} values; "
                    f"only operators that take indices (embedding, cross-entropy targets) "
                    f"read them")
        keeps = node.op.keeps_dtype and node.inputs
        dtypes[node] = dtypes[node.inputs[0]] if keeps else float_dtype
    return dtypes


def index_checks(order: list[Node], shapes: dict[Node, Shape]
                 ) -> dict[Node, list[tuple[IndexBounds, Node]]]:
    """For each index placeholder, the bounds its values must keep and the node asking for
    each, checked by the executor where the ids are fed."""
    checks: dict[Node, list[tuple[IndexBounds, Node]]] = {}
    for node in order:
        for i, bounds in node.op.index_bounds(node, shapes).items():
            source = _index_source(node.inputs[i])
            checks.setdefault(source, []).append((bounds, node))
    return checks
