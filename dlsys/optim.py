"""Optimisers that update parameters held as TVM tensors, with TVM kernels, in place."""

from __future__ import annotations

from collections.abc import Sequence

import tvm

from dlsys import tvm_op


class SGD:
    """Plain stochastic gradient descent, ``W <- W - lr * G`` for every parameter at once.

    All parameters are updated by one compiled kernel call per step. The argument tuple is
    built once and reused while the gradient tensors stay the same objects (the executor
    returns the same buffers every run), so a step allocates nothing.
    """

    def __init__(self, params: Sequence[tvm.runtime.Tensor], lr: float, target: str = "llvm"):
        self.params = list(params)
        self.lr = float(lr)
        if not self.params:
            raise ValueError("SGD needs at least one parameter")
        dtype = str(self.params[0].dtype)
        shapes = [tuple(p.shape) for p in self.params]
        self._kernel = tvm_op.make_sgd_update_many(shapes, self.lr, target, "llvm", "sgd_many",
                                                   dtype)
        self._grads: list | None = None
        self._args: tuple = ()

    def step(self, grads: Sequence[tvm.runtime.Tensor]) -> None:
        """Apply one update with ``grads``, given in the order of ``params``."""
        if self._grads is None or any(a is not b for a, b in zip(grads, self._grads)):
            if len(grads) != len(self.params):
                raise ValueError(f"SGD.step got {len(grads)} gradients for "
                                 f"{len(self.params)} parameters")
            self._kernel(*self.params, *grads, *self.params)  # checks shapes once
            self._grads = list(grads)
            self._args = (*self.params, *grads, *self.params)
            return
        self._kernel.func(*self._args)

    def state_dict(self) -> dict:
        """SGD keeps no state beyond its learning rate (a slot for checkpoints)."""
        return {"lr": self.lr}
