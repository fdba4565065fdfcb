"""The matrix product's compute definitions: ``op(A) @ op(B)``, with a fused epilogue, and
with B already packed in the column panels the tuned schedule streams.

The block named ``matmul`` is what ``dlsys.kernels.matmul.schedule`` looks for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import Shape
from dlsys.kernels.common.epilogue import Epilogue, apply_epilogue


def matmul_sizes(shape_a: Shape, trans_a: bool, shape_b: Shape,
                 trans_b: bool) -> tuple[int, int, int]:
    """``(M, N, K)`` of ``op(A) @ op(B)`` from the stored shapes (a transposed operand is
    stored transposed)."""
    m, k = (shape_a[1], shape_a[0]) if trans_a else shape_a
    return m, (shape_b[0] if trans_b else shape_b[1]), k


def matmul(shape_a: Shape, trans_a: bool, shape_b: Shape, trans_b: bool, dtype: str):
    """``C = op(A) @ op(B)`` where ``op`` transposes when asked; reduction over ``k``."""
    a = te.placeholder(shape_a, dtype=dtype, name="A")
    b = te.placeholder(shape_b, dtype=dtype, name="B")
    m, n, k_len = matmul_sizes(shape_a, trans_a, shape_b, trans_b)
    k = te.reduce_axis((0, k_len), name="k")

    def a_at(i, kk):
        return a[kk, i] if trans_a else a[i, kk]

    def b_at(kk, j):
        return b[j, kk] if trans_b else b[kk, j]

    c = te.compute((m, n), lambda i, j: te.sum(a_at(i, k) * b_at(k, j), axis=k), name="matmul")
    return [a, b], [c]


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
    a_read = a
    if m_pad != m:
        stored = (k_len, m_pad) if trans_a else (m_pad, k_len)
        row_axis = 1 if trans_a else 0

        def padded(*index):
            return tirx.if_then_else(index[row_axis] < m, a[index], tirx.const(0, dtype))

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

