"""Optimisers that update parameters in place with one fused TVM kernel per step, and
learning-rate schedules.

``SGD``, ``Adam`` and ``AdamW`` follow PyTorch's documented update rules; the learning rate,
the coefficients and the step count are tensors the kernel reads at run time, so changing
the rate or stepping compiles nothing. ``optimizer.minimize(loss)`` builds a training step
(``TrainStep``, the one step every training path runs); ``minimize(loss, max_grad_norm=1.0)``
clips the gradients by their global norm as ``torch.nn.utils.clip_grad_norm_`` does, inside
the same update kernel, and ``step.last_grad_norm`` is the norm before clipping.
"""

from dlsys.optim.adam import Adam, AdamW
from dlsys.optim.base import Optimizer
from dlsys.optim.schedulers import (
    CosineAnnealingLR,
    LinearWarmup,
    LRScheduler,
    SequentialLR,
    StepLR,
)
from dlsys.optim.sgd import SGD
from dlsys.optim.step import GradientReduce, StepRefused, TrainStep

__all__ = ["SGD", "Adam", "AdamW", "CosineAnnealingLR", "GradientReduce", "LRScheduler",
           "LinearWarmup", "Optimizer", "SequentialLR", "StepLR", "StepRefused", "TrainStep"]
