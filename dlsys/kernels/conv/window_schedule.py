"""The schedule of the ``window`` family: pooling and its adjoints, and the pools with ONNX's
options (``dlsys.kernels.conv.compute`` and ``pool_options``): producer blocks in parallel
each on its own, the last block's outer output axes fused and in parallel, its innermost
output axis (a row) vectorised; a max pool in separable steps its own way."""

from __future__ import annotations

from tvm import s_tir

from dlsys.kernels import cpu as cpu_facts
from dlsys.kernels.common.epilogue import EPILOGUE_PREFIX
from dlsys.kernels.common.loops import (
    VECTOR_LANES,
    all_blocks,
    is_reduction,
    loop_extent,
    split_loops,
    vectorize_and_parallelize,
)
from dlsys.kernels.conv.schedule import vectorize_innermost

POOL_ROWS = "pool_rows"  # a max pool's maxima over each window's rows
# A max pool's row of outputs up to this many vectors is vectorised by TVM, a longer one by
# LLVM (``_schedule_pool_rows``).
POOL_SHORT_ROW_VECTORS = 2
# A window kernel's output row up to this long is one vector loop (LeNet's 28 and 10 columns);
# a longer one is split into whole vectors.
WINDOW_VECTOR_MAX = 64


def schedule_window(sch: s_tir.Schedule) -> None:
    """Sliding-window kernels (``dlsys.kernels.conv.compute``: pooling and its adjoints).
    Producer blocks (padding, a pooling window's argmax) run first, each on its own in
    parallel; the last block runs its outer output axes fused and in parallel, its
    reductions (if any) inside them and its innermost output axis (a row) vectorised, so
    that each vector lane accumulates one output element (no reduction across lanes) and a
    lane's image position is plain arithmetic, not a division of a fused index."""
    *producers, main = all_blocks(sch)
    if any(sch.get(block).name_hint == POOL_ROWS for block in producers):
        _schedule_pool_rows(sch, main)
        return
    if producers and not is_reduction(sch, producers[-1]) \
            and sch.get(main).name_hint.startswith(EPILOGUE_PREFIX):
        # A fused epilogue (common.epilogue.apply_epilogue): the elementwise kernel before it
        # folds into it, so the epilogue's result is the only array written. Only that one:
        # the padded copies before it (a max pool's argmax and gradient, padded for windows
        # that overlap) stay arrays of their own. Inlined too, their guarded loads ran in the
        # vector loop and the gradient of a 3x3, stride-2 pool after a ReLU came out wrong,
        # and different from run to run.
        sch.compute_inline(producers.pop())
    for block in producers:
        _parallel_outer(sch, block, vector=not is_reduction(sch, block))
    _parallel_outer(sch, main, vector=True)


def _schedule_pool_rows(sch: s_tir.Schedule, out) -> None:
    """A max pool in separable steps (``compute.dilated_max_pool2d``): (image, channel)
    planes in parallel, and per output row its row of maxima over the window's rows, its
    -inf border filled apart (so that the maxima read ``X`` unguarded), then the row's
    outputs. Both row loops are left to LLVM's loop vectoriser: it loads a stride-2 row as
    whole vectors and shuffles them, where TVM's vectorised loop loads each lane on its own
    (measured on ResNet-18's pool, one thread: 5.1 ms so, 7.4 ms with TVM vectorising the
    maxima over rows, 33 ms for the whole padded plane reduced over 3 x 3 windows). A row of
    outputs of at most ``POOL_SHORT_ROW_VECTORS`` vectors is vectorised here: LLVM unrolls
    so short a loop whole and then gathers its strided loads (LeNet's 2 x 2 pools ran 3x
    slower so)."""
    rows = sch.get_sblock(POOL_ROWS)
    image, channel, row, _ = sch.get_loops(out)
    plane = sch.fuse(image, channel)
    if loop_extent(sch, plane) > 1:
        sch.parallel(plane)
    sch.compute_at(rows, row, preserve_unit_loops=True)
    column = sch.get_loops(out)[-1]
    dtype = str(sch.get(out).writes[0].source.dtype)
    if loop_extent(sch, column) <= POOL_SHORT_ROW_VECTORS * cpu_facts.host().lanes(dtype):
        sch.vectorize(column)
    columns = sch.get_loops(rows)[-1]
    if sch.can_decompose_padding(rows, columns):
        vectorize_innermost(sch, sch.decompose_padding(rows, columns))


def _parallel_outer(sch: s_tir.Schedule, block, vector: bool) -> None:
    spatial, reduce = split_loops(sch, block)
    if not reduce and not (vector and len(spatial) > 1):
        vectorize_and_parallelize(sch, sch.fuse(*spatial))
        return
    if not vector:
        sch.parallel(sch.fuse(*spatial))
        return
    *outer, inner = spatial
    inner_extent = loop_extent(sch, inner)
    if inner_extent > WINDOW_VECTOR_MAX:
        # A wide row: whole vectors in the innermost loop, the rest of the row outside.
        rows, inner = sch.split(inner, factors=[None, VECTOR_LANES])
        outer.append(rows)
    fused = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else None)
    sch.reorder(*([fused] if fused is not None else []), *reduce, inner)
    if fused is not None and loop_extent(sch, fused) > 1:
        sch.parallel(fused)
    if inner_extent > 1:
        sch.vectorize(inner)
    if reduce:
        sch.decompose_reduction(block, reduce[0])
