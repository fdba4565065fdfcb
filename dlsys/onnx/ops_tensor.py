"""ONNX's tensor and shape manipulation as dlsys graph nodes, and the shape computations
that fold into constants once the input shapes are known (see ``ops``)."""

from __future__ import annotations

import math

import numpy as np

from dlsys.onnx.bounds import PERMUTATION, SPLIT
from dlsys.onnx.ops import Context, Dims, converter, reshape_target, show_dims
from dlsys.ops.layout import transpose_op
from dlsys.ops.reshape import flatten_op, reshape_op


# ------------------------------------------------------------------- shapes
@converter("Flatten", attrs=("axis",), ranked={"axis": SPLIT})
def flatten(ctx, x):
    x = ctx.node_input(0, x)
    axis = int(ctx.attr("axis", 1))
    if axis == 1:
        return flatten_op(x)
    if axis == 0:
        return reshape_op(x, (1, -1))
    return reshape_op(x, reshape_target(ctx, ctx.output_dims(0), "the flattened shape"))


@converter("Reshape", attrs=("allowzero",), constant_inputs=(1,))
def reshape(ctx, x, shape):
    x = ctx.node_input(0, x)
    if not isinstance(shape, np.ndarray):
        raise ctx.refuse("the target shape must be a constant (an initializer or a Constant "
                         "node); dlsys fixes shapes when it builds the graph")
    spec = [int(d) for d in shape.reshape(-1)]
    if ctx.attr("allowzero", 0) and 0 in spec:
        raise ctx.refuse("allowzero=1 with a 0 in the shape (an empty tensor) is not supported")
    if spec == [0, -1]:  # PyTorch's x.view(x.size(0), -1)
        return flatten_op(x)
    dims = ctx.input_dims(0, x)
    if 0 in spec:
        if dims is None:
            raise ctx.refuse(f"shape {spec} copies input dimensions whose sizes ONNX's shape "
                             f"inference does not know")
        beyond = [i for i, d in enumerate(spec) if d == 0 and i >= len(dims)]
        if beyond:
            raise ctx.refuse(f"shape {spec} copies the input's dimension(s) {beyond} (a 0 "
                             f"copies the size at its index), but the input {show_dims(dims)} "
                             f"has rank {len(dims)}")
        spec = [dims[i] if d == 0 else d for i, d in enumerate(spec)]
    if None not in spec:
        spec = _batch_free(ctx, dims, spec)
        return flatten_op(x) if spec == [0, -1] else reshape_op(x, tuple(spec))
    return reshape_op(x, reshape_target(ctx, ctx.output_dims(0), "the target shape"))


def _batch_free(ctx: Context, dims: Dims | None, spec: list[int]) -> list[int]:
    """A reshape target whose first entry is the size of a batch that an exporter baked in,
    written so that it takes any batch; any other ``spec`` unchanged.

    PyTorch's default exporter traces ``x.view(x.size(0), -1)`` at the example's batch B and
    writes the number: ``Reshape(x, [B, -1])``, or ``[B, 784]`` for ``x.view(x.size(0),
    784)``. dlsys leaves the batch free (``reader.static_shapes``), so that target would
    fail, or silently fold the batch into the rows, at any other batch. Rewritten only where
    the input's first axis is the batch (unknown with the batch left free) and every other
    axis is known:

    - ``[B, d1, ..., dk]`` with no -1 and ``d1 * ... * dk`` the size of one input row: that
      reshape succeeds only at batch B, so -1 there changes no run that worked and makes
      every other batch a per-row reshape.
    - ``[B, ..., -1, ...]`` where the file fixes its input's batch at B and B reaches this
      input's first axis: the file defines no other batch, and the per-row reading
      (``x.view(x.size(0), -1)``) is the one every exporter's trace of a batched model
      means; the batch is copied (a 0) and the -1 sized for one row. A file whose inputs
      leave the batch free keeps ``[1, -1]`` as written: there it may fold the batch.
    """
    if dims is None or not dims or dims[0] is not None or None in dims[1:] or spec[0] <= 0 \
            or len(spec) < 2:
        return spec
    row = math.prod(dims[1:])
    rest = spec[1:]
    if -1 not in rest:
        return [-1, *rest] if math.prod(rest) == row else spec
    known = math.prod(d for d in rest if d != -1)
    fixed = ctx.fixed_shapes().get(ctx.node.input[0])
    if rest.count(-1) != 1 or not fixed or fixed[0] != spec[0] or known <= 0 or row % known:
        return spec
    return [0, -1] if rest == [-1] else [-1, *(row // known if d == -1 else d for d in rest)]


@converter("Transpose", attrs=("perm",), ranked={"perm": PERMUTATION})
def transpose(ctx, x):
    perm = ctx.attr("perm")
    return transpose_op(ctx.node_input(0, x), None if perm is None else tuple(perm))
