"""Optimisers that update parameters held as TVM tensors, with TVM kernels, in place."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm

from dlsys import tvm_op
from dlsys.checks import check_constant
from dlsys.errors import ArgumentError


class SGD:
    """Plain stochastic gradient descent, ``W <- W - lr * G`` for every parameter at once.

    All parameters are updated by one compiled kernel call per step. The learning rate is a
    one-element tensor the kernel reads at run time, so ``lr`` may change between steps (a
    schedule) without compiling anything. The argument tuple is built once and reused while
    the gradient tensors stay the same objects (the executor returns the same buffers every
    run), so a step allocates nothing.
    """

    def __init__(self, params: Sequence[tvm.runtime.Tensor], lr: float, target: str = "llvm"):
        self.params = list(params)
        if not self.params:
            raise ArgumentError("SGD needs at least one parameter")
        self.dtype = str(self.params[0].dtype)
        self._lr = tvm.runtime.empty((1,), self.dtype, self.params[0].device)
        self.lr = lr
        shapes = [tuple(p.shape) for p in self.params]
        self._kernel = tvm_op.make_sgd_update_many(shapes, target, "llvm", "sgd_many",
                                                   self.dtype)
        self._grads: list | None = None
        self._args: tuple = ()

    @property
    def lr(self) -> float:
        return self._lr_value

    @lr.setter
    def lr(self, value: float) -> None:
        rate = check_constant("SGD learning rate", value)
        # A rate that rounds to zero in the parameters' dtype would train nothing, silently.
        if not np.isfinite(np.array(rate, dtype=self.dtype)) or np.array(rate, self.dtype) <= 0:
            raise ArgumentError(f"SGD learning rate must be positive in {self.dtype}, "
                                f"got {value!r}")
        self._lr_value = rate
        self._lr.copyfrom(np.array([rate], dtype=self.dtype))

    def step(self, grads: Sequence[tvm.runtime.Tensor]) -> None:
        """Apply one update with ``grads``, given in the order of ``params``."""
        if self._grads is None or any(a is not b for a, b in zip(grads, self._grads)):
            if len(grads) != len(self.params):
                raise ArgumentError(f"SGD.step got {len(grads)} gradients for "
                                    f"{len(self.params)} parameters")
            self._kernel(self._lr, *self.params, *grads, *self.params)  # checks shapes once
            self._grads = list(grads)
            self._args = (self._lr, *self.params, *grads, *self.params)
            return
        self._kernel.func(*self._args)

    def state_dict(self) -> dict:
        """SGD keeps no state beyond its learning rate (a slot for checkpoints)."""
        return {"lr": self.lr}
