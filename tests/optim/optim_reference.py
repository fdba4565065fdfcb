"""PyTorch's documented optimiser algorithms (the pseudocode boxes of torch.optim.SGD, Adam
and AdamW, without maximize or amsgrad), written in numpy from those formulas, one step at
a time: the references the fused TVM kernels are tested against.

Arrays stay in the parameters' dtype and the coefficients are Python floats, as in PyTorch.
"""

from __future__ import annotations

import numpy as np

# Parameter shapes that exercise every path of the injective schedule: fewer elements than a
# vector, a vector remainder, several dimensions, and one large enough to run in parallel.
ODD_SHAPES = [(3, 5), (7,), (2, 3, 4), (1,), (130, 129)]


def random_problem(steps: int, dtype=np.float32, seed: int = 0, shapes=ODD_SHAPES):
    """Initial parameters and one list of gradients per step."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def sgd(params, grads_per_step, lrs, momentum=0.0, dampening=0.0, nesterov=False,
        weight_decay=0.0):
    """The parameters after each step (a list per step) of PyTorch's SGD algorithm."""
    params = [p.copy() for p in params]
    buffers = [None] * len(params)
    history = []
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            if weight_decay != 0:
                g = g + weight_decay * p
            if momentum != 0:
                if t > 1:
                    buffers[i] = momentum * buffers[i] + (1 - dampening) * g
                else:
                    buffers[i] = g.copy()
                g = g + momentum * buffers[i] if nesterov else buffers[i]
            params[i] = p - lr * g
        history.append([p.copy() for p in params])
    return history


def adam(params, grads_per_step, lrs, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         decoupled=False):
    """The parameters after each step of PyTorch's Adam (or, ``decoupled``, AdamW)."""
    beta1, beta2 = betas
    params = [p.copy() for p in params]
    firsts = [np.zeros_like(p) for p in params]
    seconds = [np.zeros_like(p) for p in params]
    history = []
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            if decoupled:
                p = p - lr * weight_decay * p
            elif weight_decay != 0:
                g = g + weight_decay * p
            firsts[i] = beta1 * firsts[i] + (1 - beta1) * g
            seconds[i] = beta2 * seconds[i] + (1 - beta2) * g * g
            m_hat = firsts[i] / (1 - beta1**t)
            v_hat = seconds[i] / (1 - beta2**t)
            params[i] = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        history.append([p.copy() for p in params])
    return history


def tensors(arrays) -> list:
    """TVM tensors holding copies of ``arrays``."""
    import tvm

    return [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
