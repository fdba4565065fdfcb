"""Compute definitions: *what* each kernel computes, written as the math.

Every function returns ``(inputs, outputs)`` lists of TE tensors, with no
scheduling decisions at all; ``dlsys.kernels.schedule`` decides how they run.
Block names (the ``name=`` of each ``te.compute``) are the contract between the
two modules: schedules look blocks up by these names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx

Shape = tuple[int, ...]
TensorList = list[te.Tensor]


def broadcast_index(out_index: Sequence, in_shape: Shape, out_shape: Shape) -> list:
    """Map an index of ``out_shape`` to the index of an input broadcast to it (numpy rules)."""
    offset = len(out_shape) - len(in_shape)
    return [0 if in_shape[d] == 1 and out_shape[d + offset] != 1 else out_index[d + offset]
            for d in range(len(in_shape))]


def binary_broadcast(shape_a: Shape, shape_b: Shape, out_shape: Shape, dtype: str,
                     combine: Callable, name: str) -> tuple[TensorList, TensorList]:
    """``C = combine(A, B)`` with both inputs broadcast to ``out_shape``."""
    a = te.placeholder(shape_a, dtype=dtype, name="A")
    b = te.placeholder(shape_b, dtype=dtype, name="B")
    c = te.compute(out_shape, lambda *i: combine(a[tuple(broadcast_index(i, shape_a, out_shape))],
                                                 b[tuple(broadcast_index(i, shape_b, out_shape))]),
                   name=name)
    return [a, b], [c]


def elemwise_add(shape: Shape, dtype: str):
    return binary_broadcast(shape, shape, shape, dtype, lambda x, y: x + y, "add")


def elemwise_mul(shape: Shape, dtype: str):
    return binary_broadcast(shape, shape, shape, dtype, lambda x, y: x * y, "mul")


def unary(shape: Shape, dtype: str, fn: Callable, name: str) -> tuple[TensorList, TensorList]:
    a = te.placeholder(shape, dtype=dtype, name="A")
    return [a], [te.compute(shape, lambda *i: fn(a[i]), name=name)]


def add_by_const(shape: Shape, const_k: float, dtype: str):
    return unary(shape, dtype, lambda x: x + tirx.const(const_k, dtype), "add_const")


def mul_by_const(shape: Shape, const_k: float, dtype: str):
    return unary(shape, dtype, lambda x: x * tirx.const(const_k, dtype), "mul_const")


def relu_value(x, dtype: str):
    """``max(x, 0)`` that keeps NaN, as numpy and PyTorch do: ``x < 0`` is false for NaN, so
    a NaN in the data or the parameters propagates to the loss instead of training on."""
    zero = tirx.const(0, dtype)
    return tirx.Select(x < zero, zero, x)


def relu(shape: Shape, dtype: str):
    return unary(shape, dtype, lambda x: relu_value(x, dtype), "relu")


def relu_gradient(shape: Shape, dtype: str):
    """``(A > 0) * G``: the adjoint of relu at input ``A`` given the upstream gradient ``G``."""
    zero = tirx.const(0, dtype)
    return binary_broadcast(shape, shape, shape, dtype,
                            lambda x, g: tirx.Select(x > zero, g, zero), "relu_grad")


def sgd_update(shape: Shape, learning_rate: float, dtype: str):
    """``W_out = W - lr * G``; reads each element once before writing it, so in-place is safe."""
    lr = tirx.const(learning_rate, dtype)
    return binary_broadcast(shape, shape, shape, dtype, lambda w, g: w - lr * g, "sgd")


def matmul(shape_a: Shape, trans_a: bool, shape_b: Shape, trans_b: bool, dtype: str):
    """``C = op(A) @ op(B)`` where ``op`` transposes when asked; reduction over ``k``."""
    a = te.placeholder(shape_a, dtype=dtype, name="A")
    b = te.placeholder(shape_b, dtype=dtype, name="B")
    m, k_len = (shape_a[1], shape_a[0]) if trans_a else shape_a
    n = shape_b[0] if trans_b else shape_b[1]
    k = te.reduce_axis((0, k_len), name="k")

    def a_at(i, kk):
        return a[kk, i] if trans_a else a[i, kk]

    def b_at(kk, j):
        return b[j, kk] if trans_b else b[kk, j]

    c = te.compute((m, n), lambda i, j: te.sum(a_at(i, k) * b_at(k, j), axis=k), name="matmul")
    return [a, b], [c]


def conv2d_nchw(shape_x: Shape, shape_f: Shape, dtype: str):
    """Direct convolution (cross-correlation, as in every DL framework), stride 1, no padding."""
    n, c_in, h, w = shape_x
    c_out, _, kh, kw = shape_f
    x = te.placeholder(shape_x, dtype=dtype, name="X")
    f = te.placeholder(shape_f, dtype=dtype, name="F")
    rc = te.reduce_axis((0, c_in), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    y = te.compute((n, c_out, h - kh + 1, w - kw + 1),
                   lambda b, o, i, j: te.sum(x[b, rc, i + ry, j + rx] * f[o, rc, ry, rx],
                                             axis=[rc, ry, rx]),
                   name="conv2d")
    return [x, f], [y]


def _row_log_sum_exp(y: te.Tensor, rows: int, cols: int):
    """Row max and row sum of ``exp(y - max)``: the stable pieces of softmax and log-sum-exp."""
    j = te.reduce_axis((0, cols), name="j")
    row_max = te.compute((rows,), lambda i: te.max(y[i, j], axis=j), name="row_max")
    j2 = te.reduce_axis((0, cols), name="j2")
    row_sum = te.compute((rows,), lambda i: te.sum(te.exp(y[i, j2] - row_max[i]), axis=j2),
                         name="row_sum")
    return row_max, row_sum


def softmax(shape: Shape, dtype: str):
    rows, cols = shape
    a = te.placeholder(shape, dtype=dtype, name="A")
    row_max, row_sum = _row_log_sum_exp(a, rows, cols)
    c = te.compute(shape, lambda i, j: te.exp(a[i, j] - row_max[i]) / row_sum[i], name="softmax")
    return [a], [c]


def softmax_cross_entropy(shape: Shape, dtype: str):
    """Mean over rows of ``-sum(Y_ * log_softmax(Y))``, with ``log_softmax = Y - max - log(sum)``.

    The log is taken of a sum that is at least 1 (its largest term is ``exp(0)``), so it is
    never ``log(0)``, whatever the logits.
    """
    y = te.placeholder(shape, dtype=dtype, name="Y")
    labels = te.placeholder(shape, dtype=dtype, name="Y_")
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, labels], [_mean_loss(y, labels, row_max, row_sum, dtype)]


def _mean_loss(y: te.Tensor, labels: te.Tensor, row_max: te.Tensor, row_sum: te.Tensor,
               dtype: str) -> te.Tensor:
    rows, cols = (int(d) for d in y.shape)
    j = te.reduce_axis((0, cols), name="jl")
    row_loss = te.compute(
        (rows,),
        lambda i: te.sum(-labels[i, j] * (y[i, j] - row_max[i] - te.log(row_sum[i])), axis=j),
        name="row_loss")
    r = te.reduce_axis((0, rows), name="r")
    inv_rows = tirx.const(1.0 / rows, dtype)
    return te.compute((1,), lambda _: te.sum(row_loss[r] * inv_rows, axis=r), name="mean_loss")


def _loss_gradient(y: te.Tensor, labels: te.Tensor, upstream: te.Tensor, row_max: te.Tensor,
                   row_sum: te.Tensor, dtype: str) -> te.Tensor:
    scale = upstream[0] / tirx.const(int(y.shape[0]), dtype)
    return te.compute(y.shape, lambda i, k: (te.exp(y[i, k] - row_max[i]) / row_sum[i]
                                             - labels[i, k]) * scale, name="sce_grad")


def softmax_cross_entropy_gradient(shape: Shape, dtype: str):
    """``(softmax(Y) - Y_) / rows * G``: the exact adjoint of the mean loss, ``G`` of shape (1,)."""
    y = te.placeholder(shape, dtype=dtype, name="Y")
    labels = te.placeholder(shape, dtype=dtype, name="Y_")
    upstream = te.placeholder((1,), dtype=dtype, name="G")
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, labels, upstream], [_loss_gradient(y, labels, upstream, row_max, row_sum, dtype)]


def softmax_cross_entropy_with_gradient(shape: Shape, dtype: str):
    """The mean loss and its adjoint in one kernel: outputs ``(gradient, loss)``.

    Both read the same row max and row sum, so fusing them computes each once.
    """
    y = te.placeholder(shape, dtype=dtype, name="Y")
    labels = te.placeholder(shape, dtype=dtype, name="Y_")
    upstream = te.placeholder((1,), dtype=dtype, name="G")
    row_max, row_sum = _row_log_sum_exp(y, *shape)
    return [y, labels, upstream], [_loss_gradient(y, labels, upstream, row_max, row_sum, dtype),
                                   _mean_loss(y, labels, row_max, row_sum, dtype)]


def reduce_sum_to(shape: Shape, to_shape: Shape, dtype: str):
    """Sum ``A`` down to ``to_shape``: the adjoint of broadcasting ``to_shape`` up to ``shape``.

    Reduced axes are the leading ones ``to_shape`` lacks and those where it has size 1.
    """
    a = te.placeholder(shape, dtype=dtype, name="A")
    offset = len(shape) - len(to_shape)
    reduced = [d for d in range(len(shape))
               if d < offset or (to_shape[d - offset] == 1 and shape[d] != 1)]
    if not reduced:
        return [a], [te.compute(to_shape, lambda *i: a[i], name="copy")]
    axes = {d: te.reduce_axis((0, shape[d]), name=f"r{d}") for d in reduced}

    def body(*out_index):
        index = [axes[d] if d in axes else out_index[d - offset] for d in range(len(shape))]
        return te.sum(a[tuple(index)], axis=list(axes.values()))

    return [a], [te.compute(to_shape, body, name="reduce_sum")]


def reduce_sum_axis_zero(shape: Shape, dtype: str):
    return reduce_sum_to(shape, tuple(shape[1:]), dtype)


def broadcast_to(shape: Shape, to_shape: Shape, dtype: str):
    """Numpy broadcasting of ``A`` to ``to_shape`` (new leading axes and size-1 axes)."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    c = te.compute(to_shape, lambda *i: a[tuple(broadcast_index(i, shape, to_shape))],
                   name="broadcast")
    return [a], [c]


def fill(shape: Shape, value: float, dtype: str):
    """A constant tensor; the one output kernel with no inputs (ones_like / zeros_like)."""
    return [], [te.compute(shape, lambda *i: tirx.const(value, dtype), name="fill")]


# An epilogue is a chain of elementwise steps applied to a matmul's result before it is
# stored: ("bias_add",) reads a vector over columns, ("add",) and ("relu_mask",) read a matrix
# of the output's shape, ("relu",) reads nothing, ("add_const", k) and ("mul_const", k) read a
# constant. The fusion pass builds these chains; the matmul schedule inlines them.
EPILOGUE_OPERANDS = {"bias_add": "vector", "add": "matrix", "relu_mask": "matrix",
                     "relu": None, "add_const": None, "mul_const": None}


def _epilogue_step(kind: str, extra: tuple, x, operand, i, j, dtype: str):
    zero = tirx.const(0, dtype)
    if kind == "bias_add":
        return x + operand[j]
    if kind == "add":
        return x + operand[i, j]
    if kind == "relu_mask":
        # (H > 0) * G where G is the matmul result: the adjoint of relu at its output H.
        return tirx.Select(operand[i, j] > zero, x, zero)
    if kind == "relu":
        return relu_value(x, dtype)
    if kind == "add_const":
        return x + tirx.const(extra[0], dtype)
    return x * tirx.const(extra[0], dtype)


def matmul_epilogue(shape_a: Shape, trans_a: bool, shape_b: Shape, trans_b: bool,
                    epilogue: tuple, dtype: str):
    """``epilogue(op(A) @ op(B))`` in one kernel; inputs are A, B, then each step's operand."""
    (a, b), (product,) = matmul(shape_a, trans_a, shape_b, trans_b, dtype)
    m, n = (int(d) for d in product.shape)
    operands = []
    out = product
    for position, (kind, *extra) in enumerate(epilogue):
        operand = None
        if EPILOGUE_OPERANDS[kind] == "vector":
            operand = te.placeholder((n,), dtype=dtype, name=f"E{position}")
        elif EPILOGUE_OPERANDS[kind] == "matrix":
            operand = te.placeholder((m, n), dtype=dtype, name=f"E{position}")
        if operand is not None:
            operands.append(operand)
        out = _epilogue_block(out, operand, kind, tuple(extra), position, dtype)
    return [a, b, *operands], [out]


def _epilogue_block(x: te.Tensor, operand, kind: str, extra: tuple, position: int, dtype: str):
    # A function of its own so each block's lambda closes over its own step.
    return te.compute(x.shape, lambda i, j: _epilogue_step(kind, extra, x[i, j], operand, i, j,
                                                           dtype),
                      name=f"epilogue{position}")


def sgd_update_many(shapes: Sequence[Shape], learning_rate: float, dtype: str):
    """One SGD step for many parameters in one kernel: inputs ``W_1..W_n, G_1..G_n``,
    outputs ``W_1'..W_n'`` (which may be the ``W_i`` themselves: each element is read before
    it is written)."""
    lr = tirx.const(learning_rate, dtype)
    weights = [te.placeholder(s, dtype=dtype, name=f"W{i}") for i, s in enumerate(shapes)]
    grads = [te.placeholder(s, dtype=dtype, name=f"G{i}") for i, s in enumerate(shapes)]
    updated = [_sgd_block(w, g, lr, i) for i, (w, g) in enumerate(zip(weights, grads))]
    return weights + grads, updated


def _sgd_block(w: te.Tensor, g: te.Tensor, lr, position: int) -> te.Tensor:
    return te.compute(w.shape, lambda *i: w[i] - lr * g[i], name=f"sgd{position}")
