"""The executor's memory, below any operator: address-range overlaps between fed values and
the executor's buffers, views of a buffer at an offset or in another shape, numpy feeds read
where they lie, and the devices dlsys runs on. Plain functions, so that
``runtime/executor.py`` holds the run loop alone."""

from __future__ import annotations

import math

import numpy as np
import tvm
import tvm_ffi

from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.graph import Shape


def overlaps(start: int, end: int, ranges) -> bool:
    """Whether [start, end) overlaps one of the [low, high) address ranges."""
    for low, high in ranges:
        if start < high and low < end:
            return True
    return False


def may_view_foreign_memory(array: np.ndarray) -> bool:
    """False for an array whose memory numpy allocated (itself or the array it views), which
    no TVM tensor can share: the cheap answer for the usual feed (40 ns, where reading its
    address costs 1 us); True for a view of another owner's memory (a DLPack view of a TVM
    tensor, a buffer, a memory map)."""
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    return base is not None


def copy_pairs(pairs: list, to_second: bool) -> None:
    """Copy each pair's first tensor into its second, or back; numpy arrays or TVM tensors."""
    for first, second in pairs:
        source, target = (first, second) if to_second else (second, first)
        if isinstance(target, np.ndarray):
            np.copyto(target, source)
        else:
            target.copyfrom(source)


def private_copy(value):
    """A copy of a fed value in memory of its own, read now (before any buffer is written)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    copy = tvm.runtime.empty(value.shape, value.dtype, value.device)
    copy.copyfrom(value)
    return copy


def view(tensor: tvm.runtime.Tensor, shape: Shape) -> tvm.runtime.Tensor:
    """``tensor`` itself, or a view of its memory with ``shape`` (a reshaping alias)."""
    return tensor if tuple(tensor.shape) == tuple(shape) else tensor._create_view(shape)


def view_at(base: tvm.runtime.Tensor, offset: int, shape: Shape) -> tvm.runtime.Tensor:
    """A view of ``base``'s memory from element ``offset`` with ``shape``. Kernels take no
    byte offset in their arguments, so a view further in is made through numpy's DLPack
    view, whose data pointer itself moves (the memory stays ``base``'s; CPU only)."""
    if offset == 0:
        return base._create_view(shape)
    if base.device.dlpack_device_type() != tvm.cpu(0).dlpack_device_type():
        raise ArgumentError("Executor: contiguous groups are supported on the CPU only")
    flat = np.from_dlpack(base)
    return tvm.runtime.from_dlpack(flat[offset:offset + math.prod(shape)].reshape(shape))


# A numpy feed at least this large is read where it lies, not copied in: wrapping it and
# pointing the kernels at it costs about 2 us (znver4), the time to copy 64-100 KiB.
IN_PLACE_FEED_BYTES = 64 * 1024
# The same where the run is one native call: a run fed like the last one then only wraps
# the array and replaces one argument of that call (0.3 us, the time to copy 8-16 KiB).
NATIVE_IN_PLACE_FEED_BYTES = 16 * 1024


def in_place_tensor(array: np.ndarray, alignment: int = 0):
    """A TVM tensor over ``array``'s own memory, for CPU kernels to read it where it lies
    (their inputs are declared aligned to the element only, ``compute.prim_func``); or
    ``array`` itself where that cannot be done: a read-only array (DLPack as TVM speaks it
    cannot say read-only), one whose elements are not aligned, or one not stored in order
    (the kernels read compact buffers). ``alignment``: the element's bytes where the caller
    knows them (0: read from ``array``)."""
    # The conversion checks all three (numpy refuses to export a read-only array): with the
    # caches cold, reading numpy's flags first would cost 0.3-0.5 us more. Handed numpy's
    # capsule, TVM skips asking the array for the protocols it may speak (one of them
    # missing: an AttributeError raised and caught).
    try:
        return tvm_ffi.from_dlpack(array.__dlpack__(),
                                   require_alignment=alignment or array.itemsize,
                                   require_contiguous=True)
    except (BufferError, RuntimeError):
        return array


def check_device(ctx) -> tvm.runtime.Device:
    """``ctx`` when it is a TVM CPU or CUDA device that exists on this machine."""
    if not isinstance(ctx, tvm.runtime.Device):
        raise ArgumentTypeError(f"Executor: ctx must be a TVM device such as tvm.cpu(0) or "
                                f"tvm.cuda(0), got {ctx!r}")
    kinds = {tvm.cpu(0).dlpack_device_type(): "cpu", tvm.cuda(0).dlpack_device_type(): "cuda"}
    if ctx.dlpack_device_type() not in kinds:
        raise ArgumentError(f"Executor: ctx {ctx} is not supported; dlsys runs on tvm.cpu(0) "
                            f"or tvm.cuda(0)")
    if not ctx.exist:
        raise ArgumentError(f"Executor: device {ctx} does not exist on this machine")
    return ctx
