"""Splitting the batch through the first layers of a CNN, so that their activations stay in
the caches.

At batch 32, MobileNet v2's first layers write tensors of 50-150 MB: each layer writes its
output to memory and the next reads it back, at the memory's pace (18-20 GB/s on a 2-vCPU
znver4 VM), whatever its kernel's schedule. Computed for two images at a time, the same
layers keep each intermediate (under 10 MB) in the L3 cache: MobileNet's first 18 calls went
from 71 to 51 ms so (measured calling the batch-2 kernels over slices by hand). onnxruntime
runs every layer over the whole batch.

``split_batch`` finds, from a fed placeholder, the longest run of operators that compute
each row of their output (along axis 0, the batch) from the same row of their inputs
(``Op.splits_rows``), reading nothing else but values computed from constants, through the
layers whose rows are large (``SPLIT_ROW_BYTES``), and ending in one value the rest of the
graph reads. That run is computed for slices of the batch in turn (``Slice``), each slice's
layers cloned, and its slices joined (``Concat``) where the graph read the run's value; the
rest of the graph is cloned onto the joined value. Every later pass sees an ordinary graph:
the slices' layers fuse and take packed weights as any layer does, share one kernel per
shape, and the memory plan reuses one slice's buffers for the next.
"""

from __future__ import annotations

import math

from dlsys.graph import Node, Shape

# Rows (images) of at least this many bytes, output by a layer, are worth splitting.
SPLIT_ROW_BYTES = 512 * 1024
# How many nodes after the last large layer the run may go on to end in a narrow value (a
# quarter of ``SPLIT_ROW_BYTES`` a row): about one block of a CNN (convolution, bias,
# activation, residual sum), so that the joined slices are small to copy.
SPLIT_MORE_NODES = 8
# The largest value a slice computes stays under this many bytes: a part of the L3 cache
# (32 MB on the EPYC VMs) that the weights and the next layer's output leave free. Batch-2
# slices (9.6 MB) were faster than batch-4 ones (19 MB) through MobileNet's 28 x 28 layers.
SPLIT_SLICE_BYTES = 12 * 1024 * 1024


def split_batch(order: list[Node], outputs: list[Node], shapes: dict[Node, Shape],
                itemsize: int, fixed: set[Node]) -> list[Node] | None:
    """``outputs`` computed with the batch split through the first layers (the new output
    nodes, in order), or None where no run of layers is worth it. ``fixed``: the
    placeholders whose values do not change within a run (constants)."""
    constant = _computed_from(order, fixed)
    for source in order:
        if not source.op.is_placeholder or source in constant or len(shapes[source]) < 2:
            continue
        run = _splittable_run(order, outputs, shapes, itemsize, source, constant)
        if run is None:
            continue
        rows = _slice_rows(run, shapes, itemsize)
        if rows is None:
            continue
        return _rewrite(order, outputs, shapes, source, run, rows)
    return None


def _computed_from(order: list[Node], fixed: set[Node]) -> set[Node]:
    """The nodes whose values depend on ``fixed`` placeholders only."""
    constant: set[Node] = set()
    for node in order:
        if node in fixed or (not node.op.is_placeholder and node.inputs
                             and all(i in constant for i in node.inputs)
                             and node.op.updates_state is None):
            constant.add(node)
    return constant


def _splittable_run(order: list[Node], outputs: list[Node], shapes: dict[Node, Shape],
                    itemsize: int, source: Node, constant: set[Node]) -> list[Node] | None:
    """The longest run of layers from ``source`` that can be computed slice by slice and
    ends in one value the rest of the graph reads; None where it holds no large layer."""
    batch = shapes[source][0]
    inside = {source}
    run: list[Node] = []
    for node in order:
        if node.op.is_placeholder or node in constant or not any(i in inside for i in node.inputs):
            continue
        if not _reads_rows(node, shapes, batch, inside, constant):
            break
        inside.add(node)
        run.append(node)
    # The large layers only, then back to where one value leaves the run.
    large = [i for i, node in enumerate(run) if _row_bytes(shapes[node], itemsize) >=
             SPLIT_ROW_BYTES]
    if not large:
        return None
    readers: dict[Node, list[Node]] = {}
    for node in order:
        for i in node.inputs:
            readers.setdefault(i, []).append(node)
    kept = set(outputs)

    def single_exit(end: int) -> bool:
        part = set(run[:end])
        return [n for n in run[:end] if n in kept
                or any(r not in part for r in readers.get(n, []))] == [run[end - 1]]

    # After the last large layer, the first end where one narrow value leaves the run (the
    # joined slices are copied once), else the first where one value leaves, else the
    # last before that layer.
    after = [end for end in range(large[-1] + 1, len(run) + 1) if single_exit(end)]
    narrow = [end for end in after if end <= large[-1] + 1 + SPLIT_MORE_NODES
              and _row_bytes(shapes[run[end - 1]], itemsize) <= SPLIT_ROW_BYTES // 4]
    before = [end for end in range(large[-1], 1, -1) if single_exit(end)]
    ends = narrow or after or before
    return run[:ends[0]] if ends else None


def _reads_rows(node: Node, shapes: dict[Node, Shape], batch: int, inside: set[Node],
                constant: set[Node]) -> bool:
    """Whether ``node`` computes each row of its output from the same rows of the run's
    values and from whole constant values alone."""
    rank = len(shapes[node])
    if node.op.updates_state is not None or rank < 2 or shapes[node][0] != batch:
        return False
    for position, i in enumerate(node.inputs):
        if i in inside:
            if position not in node.op.splits_rows or shapes[i][0] != batch \
                    or len(shapes[i]) != rank:
                return False
        elif i not in constant:
            return False
        elif position in node.op.splits_rows and len(shapes[i]) == rank and shapes[i][0] != 1:
            return False  # a constant with rows of its own (not broadcast)
    return True


def _row_bytes(shape: Shape, itemsize: int) -> int:
    return math.prod(shape[1:]) * itemsize


def _slice_rows(run: list[Node], shapes: dict[Node, Shape], itemsize: int) -> int | None:
    """Rows per slice: the most that keep every value of a slice under
    ``SPLIT_SLICE_BYTES`` and divide the batch; None where that is the whole batch."""
    batch = shapes[run[0]][0]
    largest = max(_row_bytes(shapes[node], itemsize) for node in run)
    most = max(1, SPLIT_SLICE_BYTES // largest)
    rows = max(r for r in range(1, min(most, batch) + 1) if batch % r == 0)
    return rows if rows < batch else None


def _rewrite(order: list[Node], outputs: list[Node], shapes: dict[Node, Shape], source: Node,
             run: list[Node], rows: int) -> list[Node]:
    """The graph's outputs with ``run`` computed slice by slice of ``rows`` rows."""
    from dlsys.ops.concat import concat_op
    from dlsys.ops.slicing import slice_op

    ends = []
    for start in range(0, shapes[source][0], rows):
        copies = {source: slice_op(source, 0, start, start + rows)}
        for node in run:
            copies[node] = Node(node.op, [copies.get(i, i) for i in node.inputs],
                                dict(node.attrs), f"{node.name}[{start}:{start + rows}]")
        ends.append(copies[run[-1]])
    joined = concat_op(ends, 0)
    # The rest of the graph, cloned onto the joined value.
    copies = {run[-1]: joined}
    inside = set(run)
    for node in order:
        if node in inside or node.op.is_placeholder:
            continue
        if any(i in copies for i in node.inputs):
            copies[node] = Node(node.op, [copies.get(i, i) for i in node.inputs],
                                dict(node.attrs), node.name)
    return [copies.get(out, out) for out in outputs]
