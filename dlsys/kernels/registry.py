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
from functools import partial

from dlsys.errors import ArgumentError
from dlsys.kernels import compute, compute_norm, compute_random
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


def register_elementwise(name: str, formula: Callable) -> None:
    """An elementwise kind: ``params`` are ``(input_shapes, out_shape, constants)``."""
    register(name, partial(compute.elementwise, formula), "injective", formula)


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
    add_elementwise = staticmethod(register_elementwise)
    add_epilogue = staticmethod(register_epilogue)


for _name, _formula in [("add", compute.add), ("mul", compute.mul),
                        ("add_const", compute.add_const), ("mul_const", compute.mul_const),
                        ("relu", compute.relu), ("relu_gradient", compute.relu_gradient),
                        ("sigmoid", compute.sigmoid), ("sgd", compute.sgd),
                        ("fill", compute.fill), ("sub", compute.sub), ("div", compute.div),
                        ("neg", compute.neg), ("div_const", compute.div_const),
                        ("rdiv_const", compute.rdiv_const), ("exp", compute.exp),
                        ("log", compute.log), ("tanh", compute.tanh)]:
    register_elementwise(_name, _formula)
register("broadcast_to", compute.broadcast_to, "injective")
register("reduce_sum_to", compute.reduce_sum_to, "reduce_sum")
register("reduce_sum", compute.reduce_sum, "reduce_sum")
register("expand_axes", compute.expand_axes, "injective")
register("softmax", compute.softmax, "softmax")
register("softmax_cross_entropy", compute.softmax_cross_entropy, "row_loss")
register("softmax_cross_entropy_gradient", compute.softmax_cross_entropy_gradient, "softmax")
register("softmax_cross_entropy_with_gradient", compute.softmax_cross_entropy_with_gradient,
         "row_blocks")
register("one_hot", compute.one_hot, "injective")
register("dropout", compute_random.dropout, "injective")
register("next_seed", compute_random.next_seed, "injective")
register("batchnorm_normalize", compute_norm.batchnorm_normalize, "channel_norm")
register("batchnorm_normalize_gradient", compute_norm.batchnorm_normalize_gradient, "channel_norm")
register("running_statistic", compute_norm.running_statistic, "channel_norm")
register("channel_sum", compute_norm.channel_sum, "channel_norm")
register("batchnorm_affine", compute_norm.batchnorm_affine, "channel_norm")
register_epilogue("batchnorm_affine_epilogue", compute_norm.batchnorm_affine_epilogue,
                  "channel_norm")
register("batchnorm_affine_gradient", compute_norm.batchnorm_affine_gradient, "channel_norm")
register("batchnorm_parameter_gradient", compute_norm.batchnorm_parameter_gradient,
         "channel_norm")
register("batchnorm_inference", compute_norm.batchnorm_inference, "channel_norm")
register("sgd_many", compute.sgd_update_many, "injective")

# The optimisers' fused updates (``dlsys.optim``), defined in a file of their own.
from dlsys.kernels import compute_optim  # noqa: E402 - appended after the operators' kinds

register("sgd_update", compute_optim.sgd_update, "injective")
register("adam_update", compute_optim.adam_update, "injective")

# Convolutions and pooling (``dlsys.ops.conv``, ``dlsys.ops.pool``), in a file of their own.
from dlsys.kernels import compute_conv  # noqa: E402 - appended after the operators' kinds

register("conv2d", compute_conv.conv2d, "conv_gemm")
register_epilogue("conv2d_epilogue", compute_conv.conv2d_epilogue, "conv_gemm")
register("conv2d_grad_input", compute_conv.conv2d_grad_input, "conv_direct")
register_epilogue("conv2d_grad_input_epilogue", compute_conv.conv2d_grad_input_epilogue,
                  "conv_direct")
register("conv2d_grad_weight", compute_conv.conv2d_grad_weight, "conv_weight")
for _name in ("max_pool2d", "avg_pool2d", "max_pool2d_grad", "avg_pool2d_grad"):
    register(_name, getattr(compute_conv, _name), "window")
register_epilogue("max_pool2d_grad_epilogue", compute_conv.max_pool2d_grad_epilogue, "window")

# Layout changes (``dlsys.ops.layout``), in a file of their own.
from dlsys.kernels import compute_layout  # noqa: E402 - appended after the operators' kinds

register("transpose", compute_layout.transpose, "injective")

for _family in FAMILIES:
    _family.register(Registrar())
