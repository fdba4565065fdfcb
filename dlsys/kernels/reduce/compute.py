"""The sums' compute: ``reduce_sum`` over any axes (a mean is a scaled sum), its adjoint
``expand_axes``, and ``reduce_sum_to``, the adjoint of broadcasting.

A sum is taken in ``ACCUMULATOR`` (float64) over float32 blocks where the input's innermost
axis is kept; the schedule (``dlsys.kernels.reduce.schedule``) reads the layout off the
blocks ``reduce_block``, ``reduce_sum`` and ``reduce_out``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import ACCUMULATOR, Shape, accumulate, block_size, block_sums


def reduce_sum_to(shape: Shape, to_shape: Shape, dtype: str):
    """Sum ``A`` down to ``to_shape``: the adjoint of broadcasting ``to_shape`` up to ``shape``.

    Reduced axes are the leading ones ``to_shape`` lacks and those where it has size 1.
    """
    offset = len(shape) - len(to_shape)
    source = tuple(None if to_shape[j] == 1 and shape[j + offset] != 1 else j + offset
                   for j in range(len(to_shape)))
    return reduce_sum(shape, source, 1.0, dtype)



def reduce_sum(shape: Shape, source: Sequence[int | None], scale: float, dtype: str,
               term: Callable | None = None, finish: Callable | None = None):
    """``C = scale * sum(A)`` over every axis of ``A`` that ``source`` does not name; with
    ``term``, the sum of ``term(A)`` instead, and with ``finish``, ``finish`` of the scaled
    sum (``modes.reduce_norm``: ``|A|``, ``A * A``, the square root).

    ``source`` gives, for each output axis, the input axis it indexes, or None for a size-1
    axis (``dlsys.ops.shapes.reduce_source``); ``scale`` is 1 for a sum, ``1 / count`` for a
    mean. The sum is taken in ``ACCUMULATOR`` (block ``reduce_sum``), then scaled once and
    rounded to ``dtype`` (``reduce_out``). Where ``A``'s innermost axis is kept (a sum over
    rows), one summed axis is first added up in float32 blocks (``reduce_block``, see
    ``block_sums``); where it is summed, every term is converted, and the schedule's vector
    lanes each add their own run of it.
    """
    placeholder = te.placeholder(shape, dtype=dtype, name="A")
    a = _TermOf(placeholder, term) if term is not None else placeholder
    finish = finish or (lambda value: value)
    out_shape = tuple(1 if d is None else shape[d] for d in source)
    reduced = [d for d in range(len(shape)) if d not in source]
    if not reduced:
        return [placeholder], [te.compute(out_shape, lambda *i: finish(
            a[_input_index(i, source, {})]), name="copy")]
    if reduced[-1] == len(shape) - 1:
        axes = {d: te.reduce_axis((0, shape[d]), name=f"r{d}") for d in reduced}
        total = te.compute(out_shape, lambda *i: te.sum(
            accumulate(a[_input_index(i, source, axes)]), axis=list(axes.values())),
            name="reduce_sum")
    else:
        # The axis that makes the longest float32 blocks; the other summed axes are the
        # float64 total's, around the blocks (the partials are indexed by them).
        blocked = max(reduced, key=lambda d: (block_size(shape[d]), -d))
        others = [d for d in reduced if d != blocked]

        def term(row, *index):
            summed = {**dict(zip(others, index[:len(others)])), blocked: row}
            return a[_input_index(index[len(others):], source, summed)]

        partial = block_sums(term, shape[blocked], (*(shape[d] for d in others), *out_shape),
                             "reduce_block")
        axes = [te.reduce_axis((0, shape[d]), name=f"r{d}") for d in others]
        rb = te.reduce_axis((0, int(partial.shape[0])), name="rb")
        total = te.compute(out_shape, lambda *i: te.sum(accumulate(partial[(rb, *axes, *i)]),
                                                        axis=[*axes, rb]), name="reduce_sum")
    factor = tirx.const(scale, ACCUMULATOR)
    out = te.compute(out_shape, lambda *i: finish(
        total[i] if scale == 1.0 else total[i] * factor).astype(dtype), name="reduce_out")
    return [placeholder], [out]


class _TermOf:
    """``term(A[index])`` read as ``A[index]``: the terms of a sum of a function of A,
    computed where they are read (no block of their own, so the sum's schedule is
    unchanged)."""

    def __init__(self, tensor: te.Tensor, term: Callable):
        self.tensor, self.term = tensor, term

    def __getitem__(self, index):
        return self.term(self.tensor[index])


def _input_index(out_index: Sequence, source: Sequence[int | None], axes: dict) -> tuple:
    """The input element a reduction's output element at ``out_index`` reads: each reduced
    input axis from its reduction variable in ``axes``, each kept one from its output axis."""
    index = dict(axes)
    for position, d in enumerate(source):
        if d is not None:
            index[d] = out_index[position]
    return tuple(index[d] for d in range(len(index)))


def expand_axes(shape: Shape, to_shape: Shape, source: Sequence[int | None], scale: float,
                dtype: str):
    """``C = scale * A`` spread over ``to_shape``: the adjoint of ``reduce_sum``.

    ``A`` has the shape of a reduction of ``to_shape`` whose output axes index ``source``
    (see ``reduce_sum``); each element of ``C`` reads the element of ``A`` its reduction
    would have written.
    """
    a = te.placeholder(shape, dtype=dtype, name="A")
    factor = None if scale == 1.0 else tirx.const(scale, dtype)

    def body(*index):
        value = a[tuple(0 if d is None else index[d] for d in source)]
        return value if factor is None else value * factor

    return [a], [te.compute(to_shape, body, name="expand")]


def reduce_sum_axis_zero(shape: Shape, dtype: str):
    return reduce_sum_to(shape, tuple(shape[1:]), dtype)

