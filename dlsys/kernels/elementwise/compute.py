"""Compute definitions: *what* each kernel computes, written as the math.

Every function returns ``(inputs, outputs)`` lists of TE tensors, with no
scheduling decisions at all; ``dlsys.kernels.schedule`` decides how they run.
Block names (the ``name=`` of each ``te.compute``) are the contract between the
two modules: schedules look blocks up by these names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import (
    ACCUMULATOR,
    Shape,
    TensorList,
    accumulate,
    block_size,
    block_sums,
    broadcast_index,
)

# ------------------------------------------------------------------ elementwise
# The scalar formula of each elementwise kernel kind: one element of each input, then the
# kernel's constants, in; the output element out. ``elementwise`` turns a formula into a
# kernel over broadcast inputs, and a fused matmul applies the same formula to its result,
# so an elementwise operator's math is written once, here.


def add(x, y):
    return x + y


def mul(x, y):
    return x * y


def add_const(x, k):
    return x + k


def mul_const(x, k):
    return x * k


def sub(x, y):
    return x - y


def div(x, y):
    return x / y


def neg(x):
    return -x


def div_const(x, k):
    # A true division, not a multiply by 1/k, so that ``a / 3`` rounds as numpy's does.
    return x / k


def rdiv_const(x, k):
    """``k / x``: a number divided by a tensor."""
    return k / x


def exp(x):
    return te.exp(x)


def log(x):
    return te.log(x)


def tanh(x):
    return te.tanh(x)


def relu(x):
    # ``x < 0`` is false for NaN, so NaN passes through as in numpy and PyTorch, and a NaN
    # in the data or the parameters reaches the loss instead of being trained on as 0.
    return tirx.Select(x < tirx.const(0, x.dtype), tirx.const(0, x.dtype), x)


def relu_gradient(a, g):
    """``(a > 0) * g``: the adjoint of relu at input (or output) ``a``."""
    return tirx.Select(a > tirx.const(0, a.dtype), g, tirx.const(0, g.dtype))


def sigmoid(x):
    one = tirx.const(1, x.dtype)
    return one / (one + te.exp(-x))


def sgd(w, g, lr):
    """``w - lr * g``; reads each element before writing it, so it may run in place."""
    return w - lr * g


def fill(value):
    return value


INPUT_NAMES = "ABDEFGHIJ"  # C is the classic name of an output


def elementwise(formula: Callable, input_shapes: Sequence[Shape], out_shape: Shape,
                constants: Sequence[float], dtype: str) -> tuple[TensorList, TensorList]:
    """``C = formula(*inputs, *constants)`` with every input broadcast to ``out_shape``."""
    inputs = [te.placeholder(s, dtype=dtype, name=INPUT_NAMES[i])
              for i, s in enumerate(input_shapes)]
    consts = [tirx.const(c, dtype) for c in constants]

    def body(*index):
        elements = [t[tuple(broadcast_index(index, s, out_shape))]
                    for t, s in zip(inputs, input_shapes)]
        return formula(*elements, *consts)

    return inputs, [te.compute(out_shape, body, name=formula.__name__)]


def elemwise_add(shape: Shape, dtype: str):
    return elementwise(add, [shape, shape], shape, (), dtype)



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
    zero = tirx.const(0, dtype)
    # A class labelled 0 adds nothing (0 log 0 = 0), also where its logit is -inf (a masked
    # class, as in attention): its log-softmax is -inf, and 0 * -inf would make the loss NaN.
    # A NaN label (a bad class index, ``one_hot``) still makes it NaN.
    row_loss = te.compute(
        (rows,),
        lambda i: te.sum(tirx.Select(labels[i, j] == zero, zero, -labels[i, j] * (
            y[i, j] - row_max[i] - te.log(row_sum[i]))), axis=j),
        name="row_loss")
    r = te.reduce_axis((0, rows), name="r")
    # The rows' losses add up in ACCUMULATOR and are scaled and rounded once: a float32 total
    # of a large batch drifts (6e-6 relative at 2**20 rows, where float64 gives 1e-8).
    total = te.compute((1,), lambda _: te.sum(accumulate(row_loss[r]), axis=r),
                       name="loss_total")
    inv_rows = tirx.const(1.0 / rows, ACCUMULATOR)
    return te.compute((1,), lambda i: (total[i] * inv_rows).astype(dtype), name="mean_loss")


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


def one_hot(shape: Shape, dtype: str):
    """Rows of ``shape`` (batch, classes) from class indices ``L`` (batch,): 1 at the index.

    A label that is not a whole number in ``[0, classes)`` makes its row NaN, so a bad label
    shows in the loss instead of training on a row of zeros.
    """
    rows, classes = shape
    labels = te.placeholder((rows,), dtype=dtype, name="L")
    one, zero = tirx.const(1, dtype), tirx.const(0, dtype)
    nan = tirx.const(float("nan"), dtype)

    def body(i, j):
        label = labels[i]
        valid = tirx.all(label >= zero, label < tirx.const(classes, dtype),
                         label == te.floor(label))
        return tirx.Select(valid, tirx.Select(label == j.astype(dtype), one, zero), nan)

    return [labels], [te.compute(shape, body, name="one_hot")]


def reduce_sum_to(shape: Shape, to_shape: Shape, dtype: str):
    """Sum ``A`` down to ``to_shape``: the adjoint of broadcasting ``to_shape`` up to ``shape``.

    Reduced axes are the leading ones ``to_shape`` lacks and those where it has size 1.
    """
    offset = len(shape) - len(to_shape)
    source = tuple(None if to_shape[j] == 1 and shape[j + offset] != 1 else j + offset
                   for j in range(len(to_shape)))
    return reduce_sum(shape, source, 1.0, dtype)



def reduce_sum(shape: Shape, source: Sequence[int | None], scale: float, dtype: str):
    """``C = scale * sum(A)`` over every axis of ``A`` that ``source`` does not name.

    ``source`` gives, for each output axis, the input axis it indexes, or None for a size-1
    axis (``dlsys.ops.shapes.reduce_source``); ``scale`` is 1 for a sum, ``1 / count`` for a
    mean. The sum is taken in ``ACCUMULATOR`` (block ``reduce_sum``), then scaled once and
    rounded to ``dtype`` (``reduce_out``). Where ``A``'s innermost axis is kept (a sum over
    rows), one summed axis is first added up in float32 blocks (``reduce_block``, see
    ``block_sums``); where it is summed, every term is converted, and the schedule's vector
    lanes each add their own run of it.
    """
    a = te.placeholder(shape, dtype=dtype, name="A")
    out_shape = tuple(1 if d is None else shape[d] for d in source)
    reduced = [d for d in range(len(shape)) if d not in source]
    if not reduced:
        return [a], [te.compute(out_shape, lambda *i: a[_input_index(i, source, {})],
                                name="copy")]
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
    out = te.compute(out_shape, lambda *i: (total[i] if scale == 1.0 else total[i] * factor)
                     .astype(dtype), name="reduce_out")
    return [a], [out]


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


def broadcast_to(shape: Shape, to_shape: Shape, dtype: str):
    """Numpy broadcasting of ``A`` to ``to_shape`` (new leading axes and size-1 axes)."""
    a = te.placeholder(shape, dtype=dtype, name="A")
    c = te.compute(to_shape, lambda *i: a[tuple(broadcast_index(i, shape, to_shape))],
                   name="broadcast")
    return [a], [c]



def sgd_update_many(shapes: Sequence[Shape], dtype: str):
    """One SGD step for many parameters in one kernel: inputs ``lr, W_1..W_n, G_1..G_n``,
    outputs ``W_1'..W_n'`` (which may be the ``W_i`` themselves: each element is read before
    it is written). The learning rate is a (1,) tensor, read at run time, so a schedule that
    changes it compiles nothing."""
    lr = te.placeholder((1,), dtype=dtype, name="lr")
    weights = [te.placeholder(s, dtype=dtype, name=f"W{i}") for i, s in enumerate(shapes)]
    grads = [te.placeholder(s, dtype=dtype, name=f"G{i}") for i, s in enumerate(shapes)]
    updated = [_sgd_block(w, g, lr, i) for i, (w, g) in enumerate(zip(weights, grads))]
    return [lr, *weights, *grads], updated


def _sgd_block(w: te.Tensor, g: te.Tensor, lr: te.Tensor, position: int) -> te.Tensor:
    return te.compute(w.shape, lambda *i: sgd(w[i], g[i], lr[0]), name=f"sgd{position}")
