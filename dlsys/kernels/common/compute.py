"""Compute helpers every kernel family shares: the PrimFunc a kernel compiles from, numpy
broadcasting of an index, and how sums accumulate (float32 blocks into float64 totals).

A family's compute functions return ``(inputs, outputs)`` lists of TE tensors with no
scheduling decision at all; its schedules decide how they run, and block names (the
``name=`` of each ``te.compute``) are the contract between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tvm
import tvm_ffi
from tvm import te, tirx

Shape = tuple[int, ...]
TensorList = list[te.Tensor]


def prim_func(inputs: TensorList, outputs: TensorList,
              inputs_aligned: bool = True) -> tirx.PrimFunc:
    """The function taking ``inputs + outputs`` as its buffers.

    TVM promises the code generator 64-byte-aligned buffers. ``inputs_aligned=False``
    promises the inputs only their element's alignment, so that a kernel can read a
    caller's array where it lies: numpy allocates on 16-byte boundaries, and copying a batch
    into an aligned buffer costs as much as a small model's kernels. The inputs are then
    read with unaligned vector loads, which on x86 CPUs with AVX run as fast as aligned
    ones when the data happens to be aligned. Outputs keep the promise: they are always
    memory dlsys allocated.
    """
    func = te.create_prim_func(inputs + outputs)
    if inputs_aligned:
        return func
    relaxed = {}
    for param in func.params[:len(inputs)]:
        declared = param.ty
        relaxed[param] = tirx.decl_buffer(
            declared.shape, declared.dtype, param.name, strides=declared.strides,
            elem_offset=declared.elem_offset,
            data_alignment=tvm.runtime.DataType(declared.dtype).bits // 8,
            offset_factor=declared.offset_factor)
    # Buffers are variables: swapping each one everywhere it occurs (the parameters, the
    # loads, the blocks' read regions) redeclares it.
    return tvm_ffi.structural_map(func, (tirx.Var, lambda var: relaxed.get(var, var)),
                                  order="post")


def broadcast_index(out_index: Sequence, in_shape: Shape, out_shape: Shape) -> list:
    """Map an index of ``out_shape`` to the index of an input broadcast to it (numpy rules)."""
    offset = len(out_shape) - len(in_shape)
    return [0 if in_shape[d] == 1 and out_shape[d + offset] != 1 else out_index[d + offset]
            for d in range(len(in_shape))]



# The type sums accumulate in. A float32 sum stops growing at 2**24 (16,777,216 + 1 rounds
# back to 16,777,216) and loses up to one rounding of the running total per term besides;
# float64's 29 extra bits bound that loss to about n * 2**-53 relative for n positive terms
# (1e-8 at 10**8 terms), below float32's own rounding of the result.
ACCUMULATOR = "float64"
# Terms a float32 partial sum adds before it joins a float64 total (``block_sums``). Its
# error grows about as the square root of its terms, under 1e-6 relative here; and one
# float64 add per this many float32 ones leaves a sum of data in cache as fast as a float32
# one (converting every term to float64 made the MLP's bias gradient, 256 x 256, 1.4-1.6x
# slower on znver4).
BLOCK_TERMS = 256


def accumulate(value: tirx.PrimExpr) -> tirx.PrimExpr:
    """``value`` as a term of a sum, in the ``ACCUMULATOR`` type (unchanged if it is)."""
    return value.astype(ACCUMULATOR)


def block_size(rows: int) -> int:
    """The rows of one float32 block of ``block_sums``: the widest divisor of ``rows`` up to
    ``BLOCK_TERMS`` (TE's reductions cannot skip a short last block: ``create_prim_func``
    drops a reduction's ``where``)."""
    return max(d for d in range(1, min(rows, BLOCK_TERMS) + 1) if rows % d == 0)


def block_sums(term: Callable, rows: int, shape: Shape, name: str) -> te.Tensor:
    """``P[b, *i]``: the sum of ``term(row, *i)`` over the ``block_size(rows)`` rows of block
    ``b``, in ``term``'s type; a sum whose float32 partials ``P`` are then added in
    ``ACCUMULATOR``, each partial short enough to be accurate (and, in the schedules, kept
    in registers)."""
    block = block_size(rows)
    r = te.reduce_axis((0, block), name=f"{name}_r")
    return te.compute((rows // block, *shape), lambda b, *index: te.sum(
        term(b * block + r, *index), axis=r), name=name)

