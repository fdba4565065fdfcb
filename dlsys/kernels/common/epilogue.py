"""Epilogues: elementwise steps a matmul, a convolution, a pooling adjoint or batch norm
applies to its result before storing it, so that the fused operators write one array.

``Epilogue`` is plain data an operator puts in its kernel spec (``dlsys.ops``); the kernel
pairs each step with its elementwise formula and ``apply_epilogue`` chains the steps as
blocks whose names start with ``EPILOGUE_PREFIX``, which the schedules look for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tvm import te, tirx

from dlsys.kernels.common.compute import TensorList


@dataclass(frozen=True)
class Epilogue:
    """One elementwise step applied to a matmul's result before it is stored.

    ``kind`` names an elementwise formula; the running result is its argument ``position``;
    ``operand`` says what else it reads: ``None``, ``"columns"`` (a vector indexed by the
    output's column, a dense layer's bias), ``"channels"`` (a (C, 1, 1) tensor indexed by an
    NCHW output's channel, a convolution's bias) or ``"matrix"`` (a tensor of the output's
    shape);
    ``constants`` follow the tensors. ``label`` is how the step is shown and requested
    through ``tvm_op.make_matmul_epilogue``.
    """

    kind: str
    label: str
    position: int = 0
    operand: str | None = None
    constants: tuple[float, ...] = ()

    @property
    def label_tuple(self) -> tuple:
        return (self.label, *self.constants)


def epilogue_from_label(label: str, *constants: float) -> Epilogue:
    """The epilogue step that ``label`` (a key of ``EPILOGUE_LABELS``) names."""
    template = EPILOGUE_LABELS[label]
    return Epilogue(template.kind, label, template.position, template.operand,
                    tuple(float(c) for c in constants))


EPILOGUE_LABELS = {
    "bias_add": Epilogue("add", "bias_add", operand="columns"),
    "channel_bias_add": Epilogue("add", "channel_bias_add", operand="channels"),
    "add": Epilogue("add", "add", operand="matrix"),
    # (H > 0) * G where G is the matmul result: the adjoint of relu at its output H.
    "relu_mask": Epilogue("relu_gradient", "relu_mask", position=1, operand="matrix"),
    "relu": Epilogue("relu", "relu"),
    "add_const": Epilogue("add_const", "add_const"),
    "mul_const": Epilogue("mul_const", "mul_const"),
}
EPILOGUE_OPERANDS = {label: {"columns": "vector", "matrix": "matrix", "channels": "channels",
                                None: None}[e.operand]
                     for label, e in EPILOGUE_LABELS.items()}


# The name of every epilogue block starts with it, so a schedule can find the chain.
EPILOGUE_PREFIX = "epilogue"


def apply_epilogue(result: te.Tensor, epilogue: Sequence[tuple[Epilogue, Callable]],
                   dtype: str) -> tuple[TensorList, te.Tensor]:
    """``epilogue`` applied to ``result`` as a chain of elementwise blocks; returns the
    placeholders of the steps' operands (in order) and the last block."""
    shape = tuple(int(d) for d in result.shape)
    operand_shapes = {"columns": (shape[-1],), "matrix": shape,
                      "channels": (shape[1], 1, 1) if len(shape) == 4 else None}
    operands = []
    out = result
    for position, (step, formula) in enumerate(epilogue):
        operand = None
        if step.operand is not None:
            operand = te.placeholder(operand_shapes[step.operand], dtype=dtype,
                                     name=f"E{position}")
            operands.append(operand)
        out = _epilogue_block(out, operand, step, formula, position, dtype)
    return operands, out


def _epilogue_block(x: te.Tensor, operand, step: Epilogue, formula: Callable, position: int,
                    dtype: str) -> te.Tensor:
    # A function of its own so each block's lambda closes over its own step.
    consts = [tirx.const(c, dtype) for c in step.constants]

    def body(*index):
        tensors = [x[index]]
        if operand is not None:
            if step.operand == "columns":
                value = operand[index[-1]]
            elif step.operand == "channels":
                value = operand[index[1], 0, 0]
            else:
                value = operand[index]
            tensors.insert(1 - step.position, value)  # the running result at its position
        return formula(*tensors, *consts)

    return te.compute(x.shape, body, name=f"{EPILOGUE_PREFIX}{position}")

