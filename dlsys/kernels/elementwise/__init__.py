"""Elementwise kernels: one formula per kind applied over broadcast inputs (``compute``; the
activations, math functions and comparisons ONNX models use in ``activations``),
run with the shared ``injective`` schedule (``dlsys.kernels.common.loops``)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from dlsys.kernels.elementwise import activations, compute, narrow

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES: dict = {}  # every kind here runs with the shared injective schedule

# Kind name -> scalar formula; a fused epilogue step names its kind, so these are also the
# steps a matmul, a convolution or batch norm can apply to its result.
FORMULAS = {"add": compute.add, "mul": compute.mul, "add_const": compute.add_const,
            "mul_const": compute.mul_const, "relu": compute.relu,
            "relu_gradient": compute.relu_gradient, "sigmoid": compute.sigmoid,
            "sgd": compute.sgd, "fill": compute.fill, "sub": compute.sub, "div": compute.div,
            "neg": compute.neg, "div_const": compute.div_const,
            "rdiv_const": compute.rdiv_const, "exp": compute.exp, "log": compute.log,
            "tanh": compute.tanh, "gelu": compute.gelu, "gelu_tanh": compute.gelu_tanh,
            "gelu_gradient": compute.gelu_gradient, "gelu_second": compute.gelu_second,
            "gelu_tanh_gradient": compute.gelu_tanh_gradient,
            "gelu_tanh_second": compute.gelu_tanh_second, **activations.FORMULAS,
            **narrow.FORMULAS}


def register(kinds: Registrar) -> None:
    for name, formula in FORMULAS.items():
        kinds.add(name, partial(compute.elementwise, formula), "injective", formula)
    kinds.add("broadcast_to", compute.broadcast_to, "injective")
    kinds.add("sgd_many", compute.sgd_update_many, "injective")
    kinds.add("causal_mask", compute.causal_mask, "injective")
