"""Compute definitions of the optimisers' updates: every parameter of a model in one kernel.

Each update kernel takes, in this order:

- ``lr`` (1,): the learning rate, read at run time so a schedule compiles nothing;
- ``hyper`` (k,): the optimiser's coefficients, named by ``SGD_HYPER`` / ``ADAM_HYPER``
  (run time too, so one compiled kernel serves every value a user picks);
- ``step`` (1,): how many updates were applied before this one;
- the parameters ``W_1..W_n``, then each state tensor per parameter, then ``G_1..G_n``;

and writes ``step + 1``, each new state tensor, then each new parameter. The caller passes
the same tensors as outputs, so everything updates in place, and the kernel counts its own
steps: a training step copies nothing from the host.

The clipped kinds (``clip=True``, PyTorch's ``clip_grad_norm_`` inside the update) take one
more input, ``max_norm`` (1,) in ``ACCUMULATOR``, after the gradients, and write one more
output, ``grad_norm`` (1,) in ``ACCUMULATOR``, after the parameters: the global L2 norm of
every gradient, summed in float64 (``grad_sumsq<k>`` blocks, one reduction per gradient).
Every gradient is read as ``G * min(1, max_norm / (norm + 1e-6))``, the factor computed once
(block ``clip_scale``); the gradients themselves are never written.

In place is safe because every block reads an element before it writes that element, and a
block that needs an updated state (the parameter block reads the new momentum) reads it from
the output of the block that wrote it; TE orders blocks by those reads. Per-step scalars
(the step count, Adam's bias corrections) are blocks of shape (1,), computed once per call
rather than once per element.
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx

from dlsys.kernels.common.compute import ACCUMULATOR, accumulate

Shape = tuple[int, ...]

SGD_HYPER = ("weight_decay", "momentum", "dampening")
ADAM_HYPER = ("beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay")
# What torch.nn.utils.clip_grad_norm_ adds to the norm before dividing by it.
CLIP_EPS = 1e-6


def _scalars(hyper_names: Sequence[str], dtype: str):
    lr = te.placeholder((1,), dtype=dtype, name="lr")
    hyper = te.placeholder((len(hyper_names),), dtype=dtype, name="hyper")
    step = te.placeholder((1,), dtype=dtype, name="step")
    new_step = te.compute((1,), lambda _: step[0] + tirx.const(1, dtype), name="step_count")
    coefficients = {name: hyper[i] for i, name in enumerate(hyper_names)}
    return lr, hyper, step, new_step, coefficients


def _tensors(prefix: str, shapes: Sequence[Shape], dtype: str) -> list[te.Tensor]:
    return [te.placeholder(s, dtype=dtype, name=f"{prefix}{i}") for i, s in enumerate(shapes)]


def _elementwise(shape: Shape, body, name: str) -> te.Tensor:
    # te.compute reads the lambda's signature, which must be plain ``*index``: closures over
    # each parameter's tensors are built here rather than with default arguments.
    return te.compute(shape, lambda *i: body(i), name=name)


def _clipping(grads: Sequence[te.Tensor], dtype: str):
    """``max_norm``, the global norm block and the (1,) factor every gradient is read with:
    ``min(1, max_norm / (norm + CLIP_EPS))``, as ``clip_grad_norm_`` computes it."""
    max_norm = te.placeholder((1,), dtype=ACCUMULATOR, name="max_norm")
    sums = [_sum_of_squares(k, g) for k, g in enumerate(grads)]

    def total():
        value = sums[0][0]
        for partial in sums[1:]:
            value = value + partial[0]
        return te.sqrt(value)

    norm = te.compute((1,), lambda _: total(), name="grad_norm")
    one = tirx.const(1, ACCUMULATOR)
    scale = te.compute((1,), lambda _: te.min(
        one, max_norm[0] / (norm[0] + tirx.const(CLIP_EPS, ACCUMULATOR))).astype(dtype),
        name="clip_scale")
    return max_norm, norm, scale


def _sum_of_squares(k: int, g: te.Tensor) -> te.Tensor:
    axes = [te.reduce_axis((0, int(d)), name=f"r{k}_{j}") for j, d in enumerate(g.shape)]

    def square(index):
        term = accumulate(g[index])
        return term * term

    return te.compute((1,), lambda _: te.sum(square(tuple(axes)), axis=axes),
                      name=f"grad_sumsq{k}")


def _reader(g: te.Tensor, scale: te.Tensor | None):
    """How an update block reads gradient ``g``: as it is, or clipped by ``scale``."""
    if scale is None:
        return lambda i: g[i]
    return lambda i: g[i] * scale[0]


def sgd_update(shapes: Sequence[Shape], momentum: bool, nesterov: bool, dtype: str,
               clip: bool = False):
    """PyTorch's SGD for every parameter: with ``d = G + weight_decay * W``,

    - without momentum, ``W' = W - lr * d``;
    - with momentum, ``B' = d`` at the first step, else ``momentum * B + (1 - dampening) * d``,
      and ``W' = W - lr * (d + momentum * B')`` (nesterov) or ``W - lr * B'``.

    Inputs ``lr, hyper, step, W.., [B..], G..``; outputs ``step', [B'..], W'..``.
    ``momentum`` and ``nesterov`` decide the kernel's structure (whether there is a buffer),
    so they are compile-time flags; the coefficients' values are in ``hyper``. ``clip``:
    the clipped kind (see the module's docstring).
    """
    lr, hyper, step, new_step, h = _scalars(SGD_HYPER, dtype)
    weights, grads = _tensors("W", shapes, dtype), _tensors("G", shapes, dtype)
    buffers = _tensors("B", shapes, dtype) if momentum else [None] * len(shapes)
    clipping = _clipping(grads, dtype) if clip else (None, None, None)
    # Compared with the step this call counts, so every block runs after the step block.
    first = new_step[0] == tirx.const(1, dtype)
    blocks = [_sgd_blocks(k, w, b, _reader(g, clipping[2]), lr, h, first, nesterov, dtype)
              for k, (w, b, g) in enumerate(zip(weights, buffers, grads))]
    new_buffers = [b_new for b_new, _ in blocks if b_new is not None]
    inputs = [lr, hyper, step, *weights, *buffers[:len(new_buffers)], *grads]
    outputs = [new_step, *new_buffers, *(w_new for _, w_new in blocks)]
    if clip:
        return [*inputs, clipping[0]], [*outputs, clipping[1]]
    return inputs, outputs


def sgd_update_clipped(shapes: Sequence[Shape], momentum: bool, nesterov: bool, dtype: str):
    """``sgd_update`` reading every gradient clipped to a global norm of ``max_norm``."""
    return sgd_update(shapes, momentum, nesterov, dtype, clip=True)


def _sgd_blocks(k: int, w, b, grad, lr, h: dict, first, nesterov: bool, dtype: str):
    one = tirx.const(1, dtype)

    def decayed(i):
        return grad(i) + h["weight_decay"] * w[i]

    direction = decayed
    b_new = None
    if b is not None:
        # The buffer starts as the first gradient itself (no dampening), as in PyTorch.
        b_new = _elementwise(w.shape, lambda i: tirx.Select(
            first, decayed(i), h["momentum"] * b[i] + (one - h["dampening"]) * decayed(i)),
            f"momentum{k}")

        def direction(i):
            return decayed(i) + h["momentum"] * b_new[i] if nesterov else b_new[i]
    w_new = _elementwise(w.shape, lambda i: w[i] - lr[0] * direction(i), f"param{k}")
    return b_new, w_new


def adam_update(shapes: Sequence[Shape], dtype: str, clip: bool = False):
    """PyTorch's Adam and AdamW for every parameter: with ``d = G + weight_decay * W``,
    ``M' = beta1 M + (1 - beta1) d``, ``V' = beta2 V + (1 - beta2) d^2`` and ``t`` the new
    step count,

        W' = W (1 - lr * decoupled_weight_decay)
             - lr / (1 - beta1^t) * M' / (sqrt(V') / sqrt(1 - beta2^t) + eps)

    Adam sets ``weight_decay`` (L2, folded into the gradient), AdamW
    ``decoupled_weight_decay``; the other is 0. Inputs ``lr, hyper, step, W.., M.., V..,
    G..``; outputs ``step', M'.., V'.., W'..``. ``clip``: the clipped kind (see the module's
    docstring).
    """
    lr, hyper, step, new_step, h = _scalars(ADAM_HYPER, dtype)
    weights, grads = _tensors("W", shapes, dtype), _tensors("G", shapes, dtype)
    firsts, seconds = _tensors("M", shapes, dtype), _tensors("V", shapes, dtype)
    clipping = _clipping(grads, dtype) if clip else (None, None, None)
    one = tirx.const(1, dtype)
    # The bias corrections as PyTorch arranges them, a step size and a square root, computed
    # once; the root is applied as a multiplication by its reciprocal, which spares each
    # element a division (the slowest vector instruction here after the square root).
    scalars = {
        "step_size": te.compute((1,), lambda _: lr[0] / (one - te.power(h["beta1"],
                                                                         new_step[0])),
                                name="step_size"),
        "inverse_root_correction": te.compute(
            (1,), lambda _: one / te.sqrt(one - te.power(h["beta2"], new_step[0])),
            name="inverse_root_correction"),
        "shrink": te.compute((1,), lambda _: one - lr[0] * h["decoupled_weight_decay"],
                             name="shrink"),
    }
    blocks = [_adam_blocks(k, w, m, v, _reader(g, clipping[2]), h, scalars, dtype)
              for k, (w, m, v, g) in enumerate(zip(weights, firsts, seconds, grads))]
    inputs = [lr, hyper, step, *weights, *firsts, *seconds, *grads]
    outputs = [new_step, *(b[0] for b in blocks), *(b[1] for b in blocks),
               *(b[2] for b in blocks)]
    if clip:
        return [*inputs, clipping[0]], [*outputs, clipping[1]]
    return inputs, outputs


def adam_update_clipped(shapes: Sequence[Shape], dtype: str):
    """``adam_update`` reading every gradient clipped to a global norm of ``max_norm``."""
    return adam_update(shapes, dtype, clip=True)


def _adam_blocks(k: int, w, m, v, grad, h: dict, scalars: dict, dtype: str):
    one = tirx.const(1, dtype)
    beta1, beta2 = h["beta1"], h["beta2"]

    def decayed(i):
        return grad(i) + h["weight_decay"] * w[i]

    m_new = _elementwise(w.shape, lambda i: beta1 * m[i] + (one - beta1) * decayed(i),
                         f"exp_avg{k}")
    v_new = _elementwise(w.shape,
                         lambda i: beta2 * v[i] + (one - beta2) * decayed(i) * decayed(i),
                         f"exp_avg_sq{k}")
    w_new = _elementwise(
        w.shape, lambda i: w[i] * scalars["shrink"][0] - scalars["step_size"][0] * m_new[i]
        / (te.sqrt(v_new[i]) * scalars["inverse_root_correction"][0] + h["eps"]), f"param{k}")
    return m_new, v_new, w_new

