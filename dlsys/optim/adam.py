"""Adam and AdamW with PyTorch's update rules (bias correction; L2 or decoupled decay)."""

from __future__ import annotations

import numbers

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError
from dlsys.kernels.optim import ADAM_HYPER
from dlsys.optim.base import Optimizer, check_nonnegative, check_rate


class Adam(Optimizer):
    """PyTorch's ``torch.optim.Adam`` (without amsgrad or maximize), one kernel call a step.

    With ``g = grad + weight_decay * param`` and ``t`` the step number from 1:
    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2``, and
    ``param -= lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - beta1^t)``,
    ``v_hat = v / (1 - beta2^t)``. The step count lives on the device and the kernel
    advances it, so bias correction compiles nothing per step.
    """

    kind = "adam_update"
    hyper_names = ADAM_HYPER
    state_names = ("exp_avg", "exp_avg_sq")
    nonnegative_states = ("exp_avg_sq",)
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, target: str | None = None):
        owner = type(self).__name__
        self.betas = _check_betas(owner, betas)
        # eps is checked in float32 (the narrowest dtype): one that rounds to 0 there would
        # divide 0 by 0 wherever a gradient has always been 0.
        self.eps = check_rate(owner, "eps", eps, "float32")
        self.weight_decay = check_nonnegative(owner, "weight_decay", weight_decay)
        super().__init__(params, lr, target)

    def _hyperparameters(self) -> dict[str, float]:
        decay = {"weight_decay": 0.0, "decoupled_weight_decay": 0.0}
        decay["decoupled_weight_decay" if self.decoupled else "weight_decay"] = self.weight_decay
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps, **decay}


class AdamW(Adam):
    """PyTorch's ``torch.optim.AdamW``: Adam whose weight decay is decoupled from the
    gradient, ``param *= 1 - lr * weight_decay`` before the Adam step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, target: str | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, target)


def _check_betas(owner: str, betas) -> tuple[float, float]:
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ArgumentTypeError(f"{owner}: betas must be a pair of numbers, got {betas!r}")
    checked = []
    for i, beta in enumerate(betas):
        if isinstance(beta, (bool, np.bool_)) or not isinstance(beta, numbers.Real):
            raise ArgumentTypeError(f"{owner}: betas[{i}] must be a number, got {beta!r}")
        value = float(beta)
        # A beta that rounds to 1 in float32 makes the bias correction 1 - beta^t zero.
        if not 0 <= value < 1 or float(np.float32(value)) >= 1:
            raise ArgumentError(f"{owner}: betas[{i}] must be in [0, 1) (also in float32), "
                                f"got {beta!r}")
        checked.append(value)
    return checked[0], checked[1]
