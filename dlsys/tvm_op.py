"""The kernel library: one builder per operator, each returning a compiled, cached kernel.

Every builder validates its arguments, names the compute definition (``kernels.compute``)
and the schedule kind (``kernels.schedule``), and leaves compiling and caching to
``kernels.build``. A returned kernel takes TVM tensors, inputs first and outputs last, and
writes its outputs in place. ``tgt`` is ``"llvm"`` or ``"cuda"``; ``tgt_host`` is ``"llvm"``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.kernels import compute
from dlsys.kernels.build import Kernel, build_kernel, check_shape

Shape = Sequence[int]


def _const(name: str, value) -> float:
    # numbers.Real admits numpy scalars (a learning rate read from an array); bool is an int
    # to Python but never a meaningful constant here.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_flag(name: str, value) -> bool:
    # bool("no") is True: a transpose flag that is not a bool is a caller's mistake.
    if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, int) and value in (0, 1)):
        raise ArgumentTypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _injective(kind_name: str, shape: Shape, tgt, tgt_host, func_name, dtype, define,
               params: tuple = ()) -> Kernel:
    shape = check_shape("shape", shape)
    return build_kernel("injective", (kind_name, shape) + params,
                        lambda: define(shape), dtype, tgt, tgt_host, func_name)


def make_elemwise_add(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    return _injective("add", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.elemwise_add(s, dtype))


def make_elemwise_mul(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    return _injective("mul", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.elemwise_mul(s, dtype))


def make_elemwise_add_by_const(shape: Shape, const_k, tgt, tgt_host, func_name,
                               dtype="float32") -> Kernel:
    k = _const("const_k", const_k)
    return _injective("add_const", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.add_by_const(s, k, dtype), (k,))


def make_elemwise_mul_by_const(shape: Shape, const_k, tgt, tgt_host, func_name,
                               dtype="float32") -> Kernel:
    k = _const("const_k", const_k)
    return _injective("mul_const", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.mul_by_const(s, k, dtype), (k,))


def make_relu(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    return _injective("relu", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.relu(s, dtype))


def make_relu_gradient(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    return _injective("relu_grad", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.relu_gradient(s, dtype))


def make_sgd_update(shape: Shape, learning_rate, tgt, tgt_host, func_name,
                    dtype="float32") -> Kernel:
    lr = _const("learning_rate", learning_rate)
    return _injective("sgd", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.sgd_update(s, lr, dtype), (lr,))


def make_fill(shape: Shape, value, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    """``C[...] = value``: ones_like and zeros_like."""
    v = _const("value", value)
    return _injective("fill", shape, tgt, tgt_host, func_name, dtype,
                      lambda s: compute.fill(s, v, dtype), (v,))


def broadcast_shape(shape_a: Shape, shape_b: Shape) -> tuple[int, ...] | None:
    """Numpy's broadcast of two shapes, or ``None`` when they are incompatible."""
    out = []
    for i in range(1, max(len(shape_a), len(shape_b)) + 1):
        a = shape_a[-i] if i <= len(shape_a) else 1
        b = shape_b[-i] if i <= len(shape_b) else 1
        if a != b and 1 not in (a, b):
            return None
        out.append(max(a, b))
    return tuple(reversed(out))


def make_broadcast_binary(op: str, shape_a: Shape, shape_b: Shape, tgt, tgt_host, func_name,
                          dtype="float32") -> Kernel:
    """``C = A op B`` for ``op`` in add/mul, with numpy broadcasting of both inputs."""
    shape_a, shape_b = check_shape("shape_a", shape_a), check_shape("shape_b", shape_b)
    out_shape = broadcast_shape(shape_a, shape_b)
    if out_shape is None:
        raise ShapeError(f"shapes {shape_a} and {shape_b} do not broadcast")
    combine = {"add": lambda x, y: x + y, "mul": lambda x, y: x * y}.get(op)
    if combine is None:
        raise ArgumentError(f"op must be 'add' or 'mul', got {op!r}")
    return build_kernel("injective", ("broadcast_" + op, shape_a, shape_b),
                        lambda: compute.binary_broadcast(shape_a, shape_b, out_shape, dtype,
                                                         combine, op),
                        dtype, tgt, tgt_host, func_name)


def make_matrix_mul(shapeA: Shape, transposeA: bool, shapeB: Shape, transposeB: bool, tgt,
                    tgt_host, func_name, dtype="float32") -> Kernel:
    shape_a, shape_b = check_shape("shapeA", shapeA, 2), check_shape("shapeB", shapeB, 2)
    transposeA = check_flag("transposeA", transposeA)
    transposeB = check_flag("transposeB", transposeB)
    inner_a = shape_a[0] if transposeA else shape_a[1]
    inner_b = shape_b[1] if transposeB else shape_b[0]
    if inner_a != inner_b:
        raise ShapeError(f"matmul inner dimensions differ: shapeA {shape_a} (transposeA="
                         f"{bool(transposeA)}) and shapeB {shape_b} (transposeB="
                         f"{bool(transposeB)})")
    trans = (bool(transposeA), bool(transposeB))
    return build_kernel("matmul", (shape_a, trans[0], shape_b, trans[1]),
                        lambda: compute.matmul(shape_a, trans[0], shape_b, trans[1], dtype),
                        dtype, tgt, tgt_host, func_name)


def make_conv2d(shapeX: Shape, shapeF: Shape, tgt, tgt_host, func_name,
                dtype="float32") -> Kernel:
    shape_x, shape_f = check_shape("shapeX", shapeX, 4), check_shape("shapeF", shapeF, 4)
    if shape_x[1] != shape_f[1]:
        raise ShapeError(f"conv2d channels differ: shapeX {shape_x} has {shape_x[1]}, "
                         f"shapeF {shape_f} has {shape_f[1]}")
    if shape_f[2] > shape_x[2] or shape_f[3] > shape_x[3]:
        raise ShapeError(f"conv2d filter {shape_f} is larger than the image {shape_x}")
    return build_kernel("conv2d", (shape_x, shape_f),
                        lambda: compute.conv2d_nchw(shape_x, shape_f, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_matrix_softmax(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    shape = check_shape("shape", shape, 2)
    return build_kernel("softmax", ("softmax", shape), lambda: compute.softmax(shape, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_matrix_softmax_cross_entropy(shape: Shape, tgt, tgt_host, func_name,
                                      dtype="float32") -> Kernel:
    shape = check_shape("shape", shape, 2)
    return build_kernel("softmax", ("sce", shape),
                        lambda: compute.softmax_cross_entropy(shape, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_matrix_softmax_cross_entropy_gradient(shape: Shape, tgt, tgt_host, func_name,
                                               dtype="float32") -> Kernel:
    """``f(Y, Y_, G, out)``: ``(softmax(Y) - Y_) / rows * G``, the mean loss's adjoint."""
    shape = check_shape("shape", shape, 2)
    return build_kernel("softmax", ("sce_grad", shape),
                        lambda: compute.softmax_cross_entropy_gradient(shape, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_matrix_softmax_cross_entropy_with_gradient(shape: Shape, tgt, tgt_host, func_name,
                                                    dtype="float32") -> Kernel:
    """``f(Y, Y_, G, grad, loss)``: the mean loss and its adjoint in one kernel, sharing the
    row max and row sum (what the fusion pass uses for a training graph)."""
    shape = check_shape("shape", shape, 2)
    return build_kernel("row_blocks", ("sce_with_grad", shape),
                        lambda: compute.softmax_cross_entropy_with_gradient(shape, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_reduce_sum_to(shape: Shape, to_shape: Shape, tgt, tgt_host, func_name,
                       dtype="float32") -> Kernel:
    """Sum ``A`` of ``shape`` down to ``to_shape`` (the adjoint of broadcasting)."""
    shape, to_shape = check_shape("shape", shape), check_shape("to_shape", to_shape)
    if broadcast_shape(to_shape, shape) != shape:
        raise ShapeError(f"cannot sum shape {shape} down to {to_shape}")
    return build_kernel("reduce_sum", (shape, to_shape),
                        lambda: compute.reduce_sum_to(shape, to_shape, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_reduce_sum_axis_zero(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    shape = check_shape("shape", shape)
    if len(shape) < 2:
        raise ShapeError(f"reduce_sum_axis_zero needs at least 2 dimensions, got shape {shape}")
    return make_reduce_sum_to(shape, shape[1:], tgt, tgt_host, func_name, dtype)


def make_broadcast_to(shape: Shape, to_shape: Shape, tgt, tgt_host, func_name,
                      dtype="float32") -> Kernel:
    shape, to_shape = check_shape("shape", shape), check_shape("to_shape", to_shape)
    if broadcast_shape(shape, to_shape) != to_shape:
        raise ShapeError(f"cannot broadcast shape {shape} to {to_shape}")
    return build_kernel("injective", ("broadcast_to", shape, to_shape),
                        lambda: compute.broadcast_to(shape, to_shape, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_matmul_epilogue(shapeA: Shape, transposeA: bool, shapeB: Shape, transposeB: bool,
                         epilogue: Sequence[tuple], tgt, tgt_host, func_name,
                         dtype="float32") -> Kernel:
    """A matmul with a fused elementwise epilogue: ``f(A, B, *operands, C)``.

    ``epilogue`` is a sequence of steps from ``compute.EPILOGUE_OPERANDS`` (e.g.
    ``[("bias_add",), ("relu",)]``); steps that read a vector or matrix take one operand each,
    in order, after ``A`` and ``B``.
    """
    shape_a, shape_b = check_shape("shapeA", shapeA, 2), check_shape("shapeB", shapeB, 2)
    transposeA = check_flag("transposeA", transposeA)
    transposeB = check_flag("transposeB", transposeB)
    inner_a = shape_a[0] if transposeA else shape_a[1]
    inner_b = shape_b[1] if transposeB else shape_b[0]
    if inner_a != inner_b:
        raise ShapeError(f"matmul inner dimensions differ: shapeA {shape_a} and shapeB {shape_b}")
    steps = tuple((str(kind), *(float(c) for c in extra)) for kind, *extra in epilogue)
    for kind, *_ in steps:
        if kind not in compute.EPILOGUE_OPERANDS:
            raise ValueError(f"epilogue step must be one of {sorted(compute.EPILOGUE_OPERANDS)}, "
                             f"got {kind!r}")
    trans = (bool(transposeA), bool(transposeB))
    return build_kernel("matmul", ("epilogue", shape_a, trans[0], shape_b, trans[1], steps),
                        lambda: compute.matmul_epilogue(shape_a, trans[0], shape_b, trans[1],
                                                        steps, dtype),
                        dtype, tgt, tgt_host, func_name)


def make_sgd_update_many(shapes: Sequence[Shape], learning_rate, tgt, tgt_host, func_name,
                         dtype="float32") -> Kernel:
    """One kernel updating every parameter: ``f(W_1..W_n, G_1..G_n, W_1'..W_n')``.

    Pass each ``W_i`` again as its output to update in place, as the trainer does: one call
    per training step instead of one per parameter.
    """
    lr = _const("learning_rate", learning_rate)
    if not shapes:
        raise ArgumentError("shapes must name at least one parameter")
    checked = tuple(check_shape(f"shapes[{i}]", s) for i, s in enumerate(shapes))
    return build_kernel("injective", ("sgd_many", checked, lr),
                        lambda: compute.sgd_update_many(checked, lr, dtype),
                        dtype, tgt, tgt_host, func_name)
