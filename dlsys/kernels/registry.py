"""The kernel registry: each kernel kind's compute definition paired with its schedule family.

An operator names the kernel it needs as a ``KernelSpec`` (a kind and its parameters, which
are shapes, flags and constants); ``KernelSpec.build`` finds the kind here, defines the
computation with the compute of its family and compiles it with the family's CPU schedule
(``dlsys.kernels.schedule``; the GPU thread binding on CUDA), through the kernel caches of
``dlsys.kernels.build``. The kinds come from each family's ``register()``
(``dlsys.kernels.families``); nothing else ties compute to schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dlsys.errors import ArgumentError
from dlsys.kernels.build import Kernel, build_kernel
from dlsys.kernels.families import FAMILIES
from dlsys.kernels.schedule import SCHEDULES


@dataclass(frozen=True)
class KernelKind:
    """``compute(*params, dtype) -> (inputs, outputs)`` run with the schedule family
    ``schedule`` (a key of ``schedule.SCHEDULES``); ``formula`` for elementwise kinds, which
    a fused matmul applies to its result."""

    name: str
    compute: Callable[..., tuple[list, list]]
    schedule: str
    formula: Callable | None = None
    # ``(params, dtype) -> layout or None``: for a kind whose operator packs a constant
    # operand ahead of the calls, the layout the kernel layer chooses for it (the matmul's
    # tiles); operators ask for it through ``KernelSpec.packed_layout``.
    packed_layout: Callable[[tuple, str], tuple | None] | None = None


KINDS: dict[str, KernelKind] = {}


def register(name: str, compute_fn: Callable, schedule: str, formula: Callable | None = None,
             packed_layout: Callable[[tuple, str], tuple | None] | None = None) -> None:
    if name in KINDS:
        raise ArgumentError(f"kernel kind {name!r} is registered twice")
    if schedule not in SCHEDULES:
        raise ArgumentError(f"kernel kind {name!r}: unknown schedule family {schedule!r}")
    KINDS[name] = KernelKind(name, compute_fn, schedule, formula, packed_layout)


def kind(name: str) -> KernelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ArgumentError(f"unknown kernel kind {name!r}; known: {sorted(KINDS)}") from None


def elementwise_formula(name: str) -> Callable:
    formula = kind(name).formula
    if formula is None:
        raise ArgumentError(f"kernel kind {name!r} is not elementwise")
    return formula


@dataclass(frozen=True)
class KernelSpec:
    """The kernel an operator needs: a registered ``kind`` and its ``params``."""

    kind: str
    params: tuple

    def build(self, target, dtype: str, tgt_host: str | None = None,
              func_name: str = "kernel") -> Kernel:
        entry = kind(self.kind)
        params = self.params
        return build_kernel(entry.schedule, (self.kind, *params),
                            lambda: entry.compute(*params, dtype), dtype, target, tgt_host,
                            func_name)

    def packed_layout(self, dtype: str) -> tuple | None:
        """The layout the kernel layer packs this kernel's constant operand in, or None
        where the kind packs nothing or its operand is better read as stored."""
        choose = kind(self.kind).packed_layout
        return None if choose is None else choose(self.params, dtype)


def register_epilogue(name: str, compute_fn: Callable, schedule: str,
                      packed_layout: Callable[[tuple, str], tuple | None] | None = None) -> None:
    """A kind whose compute ends ``(..., epilogue, dtype)``: the spec's ``Epilogue`` steps
    (``dlsys.kernels.common.epilogue``) are paired with their elementwise formulas before
    the compute sees them."""
    def define(*params):
        *leading, epilogue, dtype = params
        steps = [(step, elementwise_formula(step.kind)) for step in epilogue]
        return compute_fn(*leading, steps, dtype)

    register(name, define, schedule, packed_layout=packed_layout)


class Registrar:
    """What a family's ``register()`` is handed: it adds the family's kinds to ``KINDS``."""

    add = staticmethod(register)
    add_epilogue = staticmethod(register_epilogue)


for _family in FAMILIES:
    _family.register(Registrar())
