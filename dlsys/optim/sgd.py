"""Stochastic gradient descent with PyTorch's momentum, dampening, nesterov and weight decay."""

from __future__ import annotations

from dlsys.checks import check_flag
from dlsys.errors import ArgumentError
from dlsys.kernels.optim import SGD_HYPER
from dlsys.optim.base import Optimizer, check_nonnegative


class SGD(Optimizer):
    """PyTorch's ``torch.optim.SGD`` update rule, every parameter in one kernel call.

    With ``g = grad + weight_decay * param``: without momentum, ``param -= lr * g``. With
    momentum, a buffer ``b`` starts as the first ``g`` and then becomes
    ``momentum * b + (1 - dampening) * g``; the step is ``lr * b``, or with ``nesterov``
    ``lr * (g + momentum * b)``. ``lr`` may change between steps (it is a tensor the kernel
    reads), and so may a schedule; nothing is compiled per step.

    ``params``: Parameter nodes or TVM tensors (see ``Optimizer``); ``target`` is implied
    by their device and may be left out.
    """

    kind = "sgd_update"
    hyper_names = SGD_HYPER

    def __init__(self, params, lr: float, momentum: float = 0, dampening: float = 0,
                 nesterov: bool = False, weight_decay: float = 0, target: str | None = None):
        self.momentum = check_nonnegative("SGD", "momentum", momentum)
        self.dampening = check_nonnegative("SGD", "dampening", dampening)
        self.weight_decay = check_nonnegative("SGD", "weight_decay", weight_decay)
        self.nesterov = check_flag("SGD: nesterov", nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ArgumentError(f"SGD: nesterov needs a positive momentum and zero dampening, "
                                f"got momentum={momentum!r}, dampening={dampening!r}")
        # Without momentum there is no buffer at all, as in PyTorch.
        self.state_names = ("momentum_buffer",) if self.momentum != 0 else ()
        super().__init__(params, lr, target)

    def _hyperparameters(self) -> dict[str, float]:
        return {"weight_decay": self.weight_decay, "momentum": self.momentum,
                "dampening": self.dampening}

    def _kernel_params(self, shapes: tuple) -> tuple:
        return (shapes, self.momentum != 0, self.nesterov)
