"""Every kernel family, in one list: ``registry`` takes their kernel kinds from it and
``schedule`` their schedules. Adding a family is one folder under ``dlsys/kernels/`` holding
its compute, its schedules and a ``register()``, and one entry here.

A family package defines ``register(kinds)``, ``SCHEDULES`` (schedule family name to
schedule) and optionally ``DECISIONS`` (schedule family name to what its schedule decides
beyond the shapes, for the disk cache's key).
"""

from __future__ import annotations

from types import ModuleType

from dlsys.kernels import (
    attention,
    conv,
    elementwise,
    gather,
    layout,
    loss,
    matmul,
    norm,
    optim,
    random,
    reduce,
    resize,
)

FAMILIES: tuple[ModuleType, ...] = (elementwise, reduce, matmul, loss, random, norm, optim,
                                    conv, layout, gather, attention, resize)
