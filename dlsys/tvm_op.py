"""The course's kernel builders: validated arguments in, a compiled and cached kernel out.

Each ``make_*`` checks its arguments (naming the offending one), picks the registered kernel
kind (``dlsys.kernels.registry``) and builds it through the kernel caches. A returned kernel
takes TVM tensors, inputs first and outputs last, and writes its outputs in place. ``tgt``
is ``"llvm"`` or ``"cuda"``; ``tgt_host`` is ``"llvm"``. Inside dlsys, operators build
their kernels from ``KernelSpec``s directly; these builders are the public, checked door.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dlsys.checks import check_constant, check_flag
from dlsys.errors import ArgumentError, ShapeError
from dlsys.kernels.build import Kernel, build_kernel, check_shape  # noqa: F401 - re-exported
from dlsys.kernels.common.epilogue import EPILOGUE_LABELS, epilogue_from_label
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.arguments import check_axes
from dlsys.ops.shapes import (
    broadcast_shape,
    broadcast_to_shape,
    conv2d_shape,
    matmul_shape,
    pool2d_shape,
    reduce_source,
    reduced_count,
    row_matrix_shape,
    sum_to_shape,
    window_pair,
)

Shape = Sequence[int]


def _build(kind: str, params: tuple, tgt, tgt_host, func_name, dtype) -> Kernel:
    return KernelSpec(kind, params).build(tgt, dtype, tgt_host, func_name)


def _checked(rule, *args, what: str):
    """``rule(*args)``, with a ShapeError that names the builder's arguments."""
    try:
        return rule(*args)
    except ShapeError as err:
        raise ShapeError(f"{what}: {err}") from None


def _elementwise(kind: str, shape: Shape, tgt, tgt_host, func_name, dtype, arity: int,
                 constants: tuple = ()) -> Kernel:
    shape = check_shape("shape", shape)
    return _build(kind, ((shape,) * arity, shape, constants), tgt, tgt_host, func_name, dtype)


def _same_shape_builder(name: str, kind: str, arity: int, doc: str
                        ) -> Callable[..., Kernel]:
    """The course builder ``name(shape, tgt, tgt_host, func_name, dtype="float32")``: the
    formula ``kind`` over ``arity`` inputs of ``shape``, writing an output of ``shape``."""

    def build(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
        return _elementwise(kind, shape, tgt, tgt_host, func_name, dtype, arity)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


make_elemwise_add = _same_shape_builder("make_elemwise_add", "add", 2,
                                        "``f(A, B, C)``: ``C = A + B``.")
make_elemwise_mul = _same_shape_builder("make_elemwise_mul", "mul", 2,
                                        "``f(A, B, C)``: ``C = A * B``.")
make_relu = _same_shape_builder("make_relu", "relu", 1, "``f(A, C)``: ``C = max(A, 0)``.")
make_relu_gradient = _same_shape_builder("make_relu_gradient", "relu_gradient", 2,
                                         "``f(A, G, C)``: ``C = (A > 0) * G``.")
make_sigmoid = _same_shape_builder("make_sigmoid", "sigmoid", 1,
                                   "``f(A, C)``: ``C = 1 / (1 + exp(-A))``.")


def make_elemwise_add_by_const(shape: Shape, const_k, tgt, tgt_host, func_name,
                               dtype="float32") -> Kernel:
    k = check_constant("const_k", const_k)
    return _elementwise("add_const", shape, tgt, tgt_host, func_name, dtype, 1, (k,))


def make_elemwise_mul_by_const(shape: Shape, const_k, tgt, tgt_host, func_name,
                               dtype="float32") -> Kernel:
    k = check_constant("const_k", const_k)
    return _elementwise("mul_const", shape, tgt, tgt_host, func_name, dtype, 1, (k,))


def make_sgd_update(shape: Shape, learning_rate, tgt, tgt_host, func_name,
                    dtype="float32") -> Kernel:
    """``f(W, G, W_out)``: ``W - lr * G`` with ``lr`` compiled in (the course's builder;
    ``dlsys.optim`` passes the rate at run time instead)."""
    lr = check_constant("learning_rate", learning_rate)
    return _elementwise("sgd", shape, tgt, tgt_host, func_name, dtype, 2, (lr,))


def make_fill(shape: Shape, value, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    """``C[...] = value``: ones_like and zeros_like."""
    v = check_constant("value", value)
    return _elementwise("fill", shape, tgt, tgt_host, func_name, dtype, 0, (v,))


def make_broadcast_binary(op: str, shape_a: Shape, shape_b: Shape, tgt, tgt_host, func_name,
                          dtype="float32") -> Kernel:
    """``C = A op B`` for ``op`` in add/mul, with numpy broadcasting of both inputs."""
    shape_a, shape_b = check_shape("shape_a", shape_a), check_shape("shape_b", shape_b)
    out_shape = broadcast_shape(shape_a, shape_b)
    if out_shape is None:
        raise ShapeError(f"shapes {shape_a} and {shape_b} do not broadcast")
    if op not in ("add", "mul"):
        raise ArgumentError(f"op must be 'add' or 'mul', got {op!r}")
    return _build(op, ((shape_a, shape_b), out_shape, ()), tgt, tgt_host, func_name, dtype)


def _matmul_operands(shapeA, transposeA, shapeB, transposeB) -> tuple:
    shape_a, shape_b = check_shape("shapeA", shapeA, 2), check_shape("shapeB", shapeB, 2)
    trans_a = check_flag("transposeA", transposeA)
    trans_b = check_flag("transposeB", transposeB)
    out = _checked(matmul_shape, shape_a, trans_a, shape_b, trans_b,
                   what=f"matmul of shapeA {shape_a} (transposeA={trans_a}) and shapeB "
                        f"{shape_b} (transposeB={trans_b})")
    check_shape("the product's shape", out)  # (2**20, 1) @ (1, 2**20) is past int32 indexing
    return shape_a, trans_a, shape_b, trans_b


def make_matrix_mul(shapeA: Shape, transposeA: bool, shapeB: Shape, transposeB: bool, tgt,
                    tgt_host, func_name, dtype="float32") -> Kernel:
    operands = _matmul_operands(shapeA, transposeA, shapeB, transposeB)
    return _build("matmul", operands, tgt, tgt_host, func_name, dtype)


def make_matmul_epilogue(shapeA: Shape, transposeA: bool, shapeB: Shape, transposeB: bool,
                         epilogue: Sequence[tuple], tgt, tgt_host, func_name,
                         dtype="float32") -> Kernel:
    """A matmul with a fused elementwise epilogue: ``f(A, B, *operands, C)``.

    ``epilogue`` is a sequence of labelled steps from ``EPILOGUE_LABELS``
    (``dlsys.kernels.common.epilogue``; e.g. ``[("bias_add",), ("relu",)]``,
    ``("add_const", 2.0)``); steps that read a vector or a matrix take one operand each, in
    order, after ``A`` and ``B``.
    """
    operands = _matmul_operands(shapeA, transposeA, shapeB, transposeB)
    steps = []
    for position, (label, *constants) in enumerate(epilogue):
        matmul_labels = sorted(k for k, e in EPILOGUE_LABELS.items() if e.operand != "channels")
        if label not in matmul_labels:
            raise ArgumentError(f"epilogue step {position} must be one of "
                                f"{matmul_labels}, got {label!r}")
        steps.append(epilogue_from_label(
            label, *(check_constant(f"epilogue step {position}'s constant", c)
                     for c in constants)))
    return _build("matmul_epilogue", (*operands, tuple(steps)), tgt, tgt_host, func_name,
                  dtype)


def _conv_window(shape_x: Shape, shape_f: Shape, stride, padding) -> tuple:
    """Checked images, filters, output shape, stride and padding of a convolution."""
    shape_x, shape_f = check_shape("shapeX", shape_x, 4), check_shape("shapeF", shape_f, 4)
    stride, padding = window_pair("stride", stride, 1), window_pair("padding", padding, 0)
    shape_y = _checked(conv2d_shape, shape_x, shape_f, stride, padding,
                       what=f"conv2d of shapeX {shape_x}, shapeF {shape_f}, stride {stride}, "
                            f"padding {padding}")
    return shape_x, shape_f, shape_y, stride, padding


def make_conv2d(shapeX: Shape, shapeF: Shape, tgt, tgt_host, func_name, dtype="float32",
                stride=1, padding=0) -> Kernel:
    """``f(X, F, Y)``: NCHW images ``X`` cross-correlated with OIHW filters ``F``; ``stride``
    and zero ``padding`` are an int or an (h, w) pair."""
    shape_x, shape_f, shape_y, stride, padding = _conv_window(shapeX, shapeF, stride, padding)
    return _build("conv2d", (shape_x, shape_f, shape_y, stride, padding), tgt, tgt_host,
                  func_name, dtype)


def make_conv2d_grad_input(shapeX: Shape, shapeF: Shape, tgt, tgt_host, func_name,
                           dtype="float32", stride=1, padding=0) -> Kernel:
    """``f(G, F, dX)``: the gradient ``G`` of ``make_conv2d``'s output taken back to its
    images (of shape ``shapeX``)."""
    shape_x, shape_f, shape_y, stride, padding = _conv_window(shapeX, shapeF, stride, padding)
    return _build("conv2d_grad_input", (shape_y, shape_f, shape_x, stride, padding), tgt,
                  tgt_host, func_name, dtype)


def make_conv2d_grad_weight(shapeX: Shape, shapeF: Shape, tgt, tgt_host, func_name,
                            dtype="float32", stride=1, padding=0) -> Kernel:
    """``f(X, G, dF)``: the gradient ``G`` of ``make_conv2d``'s output taken back to its
    filters (of shape ``shapeF``)."""
    shape_x, shape_f, shape_y, stride, padding = _conv_window(shapeX, shapeF, stride, padding)
    return _build("conv2d_grad_weight", (shape_x, shape_y, shape_f, stride, padding), tgt,
                  tgt_host, func_name, dtype)


def _pool_window(shapeX: Shape, kernel_size, stride, padding) -> tuple:
    """Checked images, output shape and window of a pooling (stride defaults to the kernel)."""
    shape_x = check_shape("shapeX", shapeX, 4)
    kernel = window_pair("kernel_size", kernel_size, 1)
    stride = kernel if stride is None else window_pair("stride", stride, 1)
    padding = window_pair("padding", padding, 0)
    shape_y = _checked(pool2d_shape, shape_x, kernel, stride, padding,
                       what=f"pooling of shapeX {shape_x}, kernel_size {kernel}, stride "
                            f"{stride}, padding {padding}")
    return shape_x, shape_y, (kernel, stride, padding)


def make_maxpool2d(shapeX: Shape, kernel_size, tgt, tgt_host, func_name, dtype="float32",
                   stride=None, padding=0) -> Kernel:
    """``f(X, Y)``: the maximum of each window, padding being -inf."""
    shape_x, shape_y, window = _pool_window(shapeX, kernel_size, stride, padding)
    return _build("max_pool2d", (shape_x, shape_y, *window), tgt, tgt_host, func_name, dtype)


def make_avgpool2d(shapeX: Shape, kernel_size, tgt, tgt_host, func_name, dtype="float32",
                   stride=None, padding=0) -> Kernel:
    """``f(X, Y)``: the mean of each window, padding counted as zeros."""
    shape_x, shape_y, window = _pool_window(shapeX, kernel_size, stride, padding)
    return _build("avg_pool2d", (shape_x, shape_y, *window), tgt, tgt_host, func_name, dtype)


def make_maxpool2d_grad(shapeX: Shape, kernel_size, tgt, tgt_host, func_name, dtype="float32",
                        stride=None, padding=0) -> Kernel:
    """``f(X, G, dX)``: each window's gradient ``G`` given to its first maximum in ``X``."""
    shape_x, shape_y, window = _pool_window(shapeX, kernel_size, stride, padding)
    return _build("max_pool2d_grad", (shape_x, shape_y, shape_x, *window), tgt, tgt_host,
                  func_name, dtype)


def make_avgpool2d_grad(shapeX: Shape, kernel_size, tgt, tgt_host, func_name, dtype="float32",
                        stride=None, padding=0) -> Kernel:
    """``f(G, dX)``: each window's gradient ``G`` spread evenly over the window."""
    shape_x, shape_y, window = _pool_window(shapeX, kernel_size, stride, padding)
    return _build("avg_pool2d_grad", (shape_y, shape_x, *window), tgt, tgt_host, func_name,
                  dtype)


def _rows(kind: str, shape: Shape, tgt, tgt_host, func_name, dtype) -> Kernel:
    shape = check_shape("shape", shape)
    _checked(row_matrix_shape, shape, what="shape")
    return _build(kind, (shape,), tgt, tgt_host, func_name, dtype)


def make_matrix_softmax(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    return _rows("softmax", shape, tgt, tgt_host, func_name, dtype)


def make_matrix_softmax_cross_entropy(shape: Shape, tgt, tgt_host, func_name,
                                      dtype="float32") -> Kernel:
    """``f(Y, Y_, loss)``: the mean over rows of ``-sum(Y_ * log_softmax(Y))``."""
    return _rows("softmax_cross_entropy", shape, tgt, tgt_host, func_name, dtype)


def make_matrix_softmax_cross_entropy_gradient(shape: Shape, tgt, tgt_host, func_name,
                                               dtype="float32") -> Kernel:
    """``f(Y, Y_, G, out)``: ``(softmax(Y) - Y_) / rows * G``, the mean loss's adjoint."""
    return _rows("softmax_cross_entropy_gradient", shape, tgt, tgt_host, func_name, dtype)


def make_matrix_softmax_cross_entropy_with_gradient(shape: Shape, tgt, tgt_host, func_name,
                                                    dtype="float32") -> Kernel:
    """``f(Y, Y_, G, grad, loss)``: the mean loss and its adjoint in one kernel, sharing the
    row max and row sum (what the fusion pass uses for a training graph)."""
    return _rows("softmax_cross_entropy_with_gradient", shape, tgt, tgt_host, func_name, dtype)


def make_reduce_sum_to(shape: Shape, to_shape: Shape, tgt, tgt_host, func_name,
                       dtype="float32") -> Kernel:
    """Sum ``A`` of ``shape`` down to ``to_shape`` (the adjoint of broadcasting)."""
    shape, to_shape = check_shape("shape", shape), check_shape("to_shape", to_shape)
    _checked(sum_to_shape, shape, to_shape, what="reduce_sum_to")
    return _build("reduce_sum_to", (shape, to_shape), tgt, tgt_host, func_name, dtype)


def make_reduce_sum_axis_zero(shape: Shape, tgt, tgt_host, func_name, dtype="float32") -> Kernel:
    shape = check_shape("shape", shape)
    if len(shape) < 2:
        raise ShapeError(f"reduce_sum_axis_zero needs at least 2 dimensions, got shape {shape}")
    return make_reduce_sum_to(shape, shape[1:], tgt, tgt_host, func_name, dtype)


def _reduce_axes(shape: Shape, axes, keepdims: bool, mean: bool, tgt, tgt_host, func_name,
                 dtype) -> Kernel:
    name = "reduce_mean" if mean else "reduce_sum"
    shape = check_shape("shape", shape)
    axes = check_axes(name, axes)
    keepdims = check_flag("keepdims", keepdims)
    source = _checked(reduce_source, shape, axes, keepdims, what=f"{name} of shape {shape}")
    scale = 1.0 / reduced_count(shape, source) if mean else 1.0
    return _build("reduce_sum", (shape, source, scale), tgt, tgt_host, func_name, dtype)


def make_reduce_sum(shape: Shape, axes, keepdims: bool, tgt, tgt_host, func_name,
                    dtype="float32") -> Kernel:
    """``f(A, C)``: ``A.sum(axis=axes, keepdims=keepdims)``, where ``axes`` is an int, a tuple
    of ints (negative ones count from the end) or None for all; a result with no axes left
    has shape (1,)."""
    return _reduce_axes(shape, axes, keepdims, False, tgt, tgt_host, func_name, dtype)


def make_reduce_mean(shape: Shape, axes, keepdims: bool, tgt, tgt_host, func_name,
                     dtype="float32") -> Kernel:
    """``f(A, C)``: ``A.mean(axis=axes, keepdims=keepdims)``; see ``make_reduce_sum``."""
    return _reduce_axes(shape, axes, keepdims, True, tgt, tgt_host, func_name, dtype)


def make_broadcast_to(shape: Shape, to_shape: Shape, tgt, tgt_host, func_name,
                      dtype="float32") -> Kernel:
    shape, to_shape = check_shape("shape", shape), check_shape("to_shape", to_shape)
    _checked(broadcast_to_shape, shape, to_shape, what="broadcast_to")
    return _build("broadcast_to", (shape, to_shape), tgt, tgt_host, func_name, dtype)


def _parameter_shapes(shapes) -> tuple:
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence) or not shapes:
        raise ArgumentError(f"shapes must list at least one parameter shape, got {shapes!r}")
    return tuple(check_shape(f"shapes[{i}]", s) for i, s in enumerate(shapes))


def make_sgd_update_many(shapes: Sequence[Shape], tgt, tgt_host, func_name,
                         dtype="float32") -> Kernel:
    """One kernel updating every parameter: ``f(lr, W_1..W_n, G_1..G_n, W_1'..W_n')``.

    ``lr`` is a (1,) tensor read at run time, so changing the rate compiles nothing. Pass
    each ``W_i`` again as its output to update in place: one call per training step instead
    of one per parameter. (``dlsys.optim`` uses ``make_sgd_update_fused``'s kernel, which
    adds weight decay and momentum.)
    """
    return _build("sgd_many", (_parameter_shapes(shapes),), tgt, tgt_host, func_name, dtype)


def make_sgd_update_fused(shapes: Sequence[Shape], momentum: bool, nesterov: bool, tgt,
                          tgt_host, func_name, dtype="float32") -> Kernel:
    """PyTorch's SGD for every parameter in one kernel (``dlsys.optim.SGD``'s):
    ``f(lr, hyper, step, W.., [B..], G.., step', [B'..], W'..)``, where ``hyper`` holds
    ``kernels.optim.compute.SGD_HYPER`` and the momentum buffers ``B`` exist when ``momentum``.
    Pass the same tensors as outputs to update in place; see ``kernels.optim.compute.sgd_update``.
    """
    momentum, nesterov = check_flag("momentum", momentum), check_flag("nesterov", nesterov)
    if nesterov and not momentum:
        raise ArgumentError("nesterov needs momentum")
    return _build("sgd_update", (_parameter_shapes(shapes), momentum, nesterov), tgt,
                  tgt_host, func_name, dtype)


def make_adam_update(shapes: Sequence[Shape], tgt, tgt_host, func_name,
                     dtype="float32") -> Kernel:
    """PyTorch's Adam and AdamW for every parameter in one kernel (``dlsys.optim.Adam``'s):
    ``f(lr, hyper, step, W.., M.., V.., G.., step', M'.., V'.., W'..)``, where ``hyper``
    holds ``kernels.optim.compute.ADAM_HYPER``; see ``kernels.optim.compute.adam_update``."""
    return _build("adam_update", (_parameter_shapes(shapes),), tgt, tgt_host, func_name,
                  dtype)
