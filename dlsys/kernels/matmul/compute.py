"""The matrix product's compute definitions: ``op(A) @ op(B)``, with a fused epilogue, and
with B already packed in the column panels the tuned schedule streams; and the batched
product of stacks of matrices (``batched_matmul``).

The block named ``matmul`` is what ``dlsys.kernels.matmul.schedule`` looks for. An
operand of rank >= 3 is read as the matrix of its rows, all batch axes folded together:
through the block ``A_rows`` (``B_rows``), and an untransposed A's product is written back
through ``matmul_stacked`` (index maps, no copy, which the schedule inlines). So a dense
layer applied to (batch, time, features) runs the tuned 2-D kernel with M = batch * time,
and its weight gradient with K = batch * time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape, broadcast_index
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue


def matmul_sizes(shape_a: Shape, trans_a: bool, shape_b: Shape,
                 trans_b: bool) -> tuple[int, int, int]:
    """``(M, N, K)`` of ``op(A) @ op(B)`` from the stored shapes (a transposed operand is
    stored transposed); an operand of rank >= 3 is read as the matrix of its rows."""
    m, k = _rows_shape(shape_a)[::-1] if trans_a else _rows_shape(shape_a)
    _, n = _rows_shape(shape_b)[::-1] if trans_b else _rows_shape(shape_b)
    return m, n, k


def _rows_shape(shape: Shape) -> tuple[int, int]:
    """(rows, last axis) of a tensor read as the matrix of its rows."""
    return math.prod(shape[:-1]), shape[-1]


# The index maps between a tensor of rank >= 3 and the matrix of all its rows: the blocks
# reading an operand so end with this suffix, and the schedule inlines them.
ROWS_VIEW_SUFFIX = "_rows"
ROWS_OUTPUT = "matmul_stacked"


def _as_rows(x: te.Tensor) -> te.Tensor:
    """``x`` (..., K) as the matrix (rows, K): ``x`` itself when it is one, else a block the
    schedule inlines into whatever reads it."""
    shape = tuple(int(d) for d in x.shape)
    if len(shape) == 2:
        return x
    lead = shape[:-1]
    return te.compute(_rows_shape(shape), lambda i, kk: x[(*_unravel(i, lead), kk)],
                      name=x.op.name + ROWS_VIEW_SUFFIX)


def _unravel(flat, lead: Shape) -> list:
    """The index in ``lead`` of row ``flat`` (row-major)."""
    index = []
    for size in reversed(lead[1:]):
        index.append(flat % size)
        flat = flat // size
    return [flat, *reversed(index)]


def _from_rows(product: te.Tensor, lead: Shape) -> te.Tensor:
    """The (rows, N) ``product`` as (*lead, N): itself when ``lead`` is one axis."""
    if len(lead) == 1:
        return product

    def body(*index):
        flat = index[0]
        for axis, size in zip(index[1:-1], lead[1:]):
            flat = flat * size + axis
        return product[flat, index[-1]]

    return te.compute((*lead, int(product.shape[1])), body, name=ROWS_OUTPUT)


def matmul(shape_a: Shape, trans_a: bool, shape_b: Shape, trans_b: bool, dtype: str):
    """``C = op(A) @ op(B)`` where ``op`` transposes when asked; reduction over ``k``.

    An operand of rank >= 3 is read as the matrix of its rows (all axes but the last folded
    together, no copy): an untransposed A so gives C of shape (*A[:-1], N), a dense layer
    over every position of a sequence; a transposed A with B of the same rows gives the sum
    over all rows of their outer products, that layer's weight gradient.
    """
    a = te.placeholder(shape_a, dtype=dtype, name="A")
    b = te.placeholder(shape_b, dtype=dtype, name="B")
    m, n, k_len = matmul_sizes(shape_a, trans_a, shape_b, trans_b)
    k = te.reduce_axis((0, k_len), name="k")
    rows, b_rows = _as_rows(a), _as_rows(b)

    def a_at(i, kk):
        return rows[kk, i] if trans_a else rows[i, kk]

    def b_at(kk, j):
        return b_rows[j, kk] if trans_b else b_rows[kk, j]

    c = te.compute((m, n), lambda i, j: te.sum(a_at(i, k) * b_at(k, j), axis=k), name="matmul")
    return [a, b], [c if trans_a else _from_rows(c, shape_a[:-1])]


# The block annotation that carries a pre-packed matmul's tiles to its schedule: the panel
# width is fixed when the operand is packed, so the product must use the same tiles.
MATMUL_TILES_ATTR = "dlsys_matmul_tiles"


def pack_panels(shape_b: Shape, trans_b: bool, panel: int, dtype: str):
    """``op(B)`` (K x N) as column panels ``P[p, k, l] = op(B)[k, p * panel + l]``, the last
    panel zero-filled past N: the layout the matmul's inner loop streams (``kernels.matmul``)."""
    b = te.placeholder(shape_b, dtype=dtype, name="B")
    k_len, n = (shape_b[1], shape_b[0]) if trans_b else shape_b
    panels = -(-n // panel)

    def body(p, kk, lane):
        j = p * panel + lane
        value = b[j, kk] if trans_b else b[kk, j]
        # if_then_else, not select: a column past N must not even be read.
        return value if n % panel == 0 else tirx.if_then_else(j < n, value,
                                                              tirx.const(0, dtype))

    return [b], [te.compute((panels, k_len, panel), body, name="pack_panels")]


def matmul_prepacked(shape_a: Shape, trans_a: bool, shape_b: Shape, trans_b: bool,
                     tiles: tuple, epilogue: Sequence[tuple[Epilogue, Callable]], dtype: str):
    """``epilogue(op(A) @ op(B))`` with B already in ``pack_panels`` layout (panel ``tiles[1]``).

    The product runs over whole register tiles (``tiles[0]`` rows, whole panels), so A's rows
    are zero-padded (block ``A_pad``, in A's stored layout) and a block ``matmul_crop`` cuts the
    product back to (M, N): the same blocks ``pad_einsum`` makes for an unpacked matmul.
    """
    rows, panel = tiles[0], tiles[1]
    a = te.placeholder(shape_a, dtype=dtype, name="A")
    m, n, k_len = matmul_sizes(shape_a, trans_a, shape_b, trans_b)
    panels = -(-n // panel)
    packed = te.placeholder((panels, k_len, panel), dtype=dtype, name="B_packed")
    m_pad = -(-m // rows) * rows
    a_read = _as_rows(a)
    if m_pad != m:
        a_rows = a_read
        stored = (k_len, m_pad) if trans_a else (m_pad, k_len)
        row_axis = 1 if trans_a else 0

        def padded(*index):
            return tirx.if_then_else(index[row_axis] < m, a_rows[index],
                                     tirx.const(0, dtype))

        a_read = te.compute(stored, padded, name="A_pad")
    k = te.reduce_axis((0, k_len), name="k")

    def a_at(i, kk):
        return a_read[kk, i] if trans_a else a_read[i, kk]

    product = te.compute(
        (m_pad, panels * panel),
        lambda i, j: te.sum(a_at(i, k) * packed[j // panel, k, j % panel], axis=k),
        name="matmul", attrs={MATMUL_TILES_ATTR: [m, n, k_len, int(trans_a), int(trans_b),
                                                 *(int(t) for t in tiles)]})
    if (m_pad, panels * panel) != (m, n):
        product = te.compute((m, n), lambda i, j: product[i, j], name="matmul_crop")
    if not trans_a:
        product = _from_rows(product, shape_a[:-1])
    operands, out = apply_epilogue(product, epilogue, dtype)
    return [a, packed, *operands], [out]



def matmul_epilogue(shape_a: Shape, trans_a: bool, shape_b: Shape, trans_b: bool,
                    epilogue: Sequence[tuple[Epilogue, Callable]], dtype: str):
    """``epilogue(op(A) @ op(B))`` in one kernel; inputs are A, B, then each step's operand.

    ``epilogue`` pairs each step with its formula (see ``elementwise``).
    """
    (a, b), (product,) = matmul(shape_a, trans_a, shape_b, trans_b, dtype)
    operands, out = apply_epilogue(product, epilogue, dtype)
    return [a, b, *operands], [out]



# The block of ``batched_matmul``, and the annotation carrying its per-matrix problem
# ``[M, N, K, trans_a, trans_b, summed batch axes]`` to its schedule
# (``dlsys.kernels.matmul.batched``).
BATCHED_BLOCK = "batched_matmul"
BATCHED_ATTR = "dlsys_batched_matmul"


def batch_shape(shape_a: Shape, shape_b: Shape) -> Shape:
    """The batch axes of a batched product: those of both operands (all but the last two),
    broadcast as numpy does (the operator's shape rule has checked that they do)."""
    lead_a, lead_b = shape_a[:-2], shape_b[:-2]
    rank = max(len(lead_a), len(lead_b))
    lead_a = (1,) * (rank - len(lead_a)) + tuple(lead_a)
    lead_b = (1,) * (rank - len(lead_b)) + tuple(lead_b)
    return tuple(max(x, y) for x, y in zip(lead_a, lead_b))


def batched_matmul(shape_a: Shape, trans_a: bool, shape_b: Shape, trans_b: bool,
                   out_shape: Shape, epilogue: Sequence[tuple[Epilogue, Callable]], dtype: str):
    """``epilogue(op(A) @ op(B))`` over stacks of matrices, as ``numpy.matmul``: the last
    two axes of each operand are a matrix (``op`` transposing them where asked), the axes
    before are batch axes, broadcast against each other (an operand of rank 2 is one matrix
    shared by the whole batch).

    ``out_shape`` is the product's (*batch, M, N), or a shape it sums down to as numpy
    broadcasting's adjoint (leading batch axes dropped, others kept with size 1): a
    gradient with respect to an operand that was broadcast.
    """
    a = te.placeholder(shape_a, dtype=dtype, name="A")
    b = te.placeholder(shape_b, dtype=dtype, name="B")
    m, k_len = (shape_a[-1], shape_a[-2]) if trans_a else shape_a[-2:]
    n = shape_b[-2] if trans_b else shape_b[-1]
    batch = batch_shape(shape_a, shape_b)
    out_batch = tuple(out_shape[:-2])
    offset = len(batch) - len(out_batch)
    # A batch axis of the product is summed where the output drops it or keeps it as 1.
    summed = {d: te.reduce_axis((0, size), name=f"s{d}") for d, size in enumerate(batch)
              if d < offset or (out_batch[d - offset] == 1 and size != 1)}
    k = te.reduce_axis((0, k_len), name="k")

    def body(*index):
        *outer, i, j = index
        at = [summed[d] if d in summed else outer[d - offset] if d >= offset else 0
              for d in range(len(batch))]
        at_a = broadcast_index(at, shape_a[:-2], batch)
        at_b = broadcast_index(at, shape_b[:-2], batch)
        a_value = a[(*at_a, k, i)] if trans_a else a[(*at_a, i, k)]
        b_value = b[(*at_b, j, k)] if trans_b else b[(*at_b, k, j)]
        return te.sum(a_value * b_value, axis=[*summed.values(), k])

    product = te.compute((*out_batch, m, n), body, name=BATCHED_BLOCK, attrs={
        BATCHED_ATTR: [m, n, k_len, int(trans_a), int(trans_b), len(summed)]})
    operands, out = apply_epilogue(product, epilogue, dtype)
    return [a, b, *operands], [out]
