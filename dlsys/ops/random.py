"""Random operators: dropout, whose mask comes from a seed that advances once per run.

``next_seed_op(seed)`` is a state update (``updates_state``): its kernel writes the advanced
seed over the seed buffer's own tensor, so every run of a training graph draws a new mask.
``dropout_op(x, seed, p)`` and its gradient read the same advanced seed and so drop the same
elements, without a stored mask.
"""

from __future__ import annotations

from dlsys.checks import check_constant
from dlsys.errors import ArgumentError, ShapeError
from dlsys.graph import Node, Op, short_name
from dlsys.kernels.random import SEED_PERIOD
from dlsys.kernels.registry import KernelSpec


class NextSeedOp(Op):
    """The seed of this run: the buffer's value plus one (mod 2**24), written back to it."""

    name = "NextSeed"
    updates_state = 0

    def __call__(self, seed: Node) -> Node:
        return Node(self, [seed])

    def infer_shape(self, node, input_shapes):
        if tuple(input_shapes[0]) != (1,):
            raise ShapeError(f"{node.name}: a seed has shape (1,), got {tuple(input_shapes[0])}")
        return (1,)

    def gradient(self, node, output_grad):
        return [None]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("next_seed", ())

    def reference(self, node, seed):
        return (seed + 1) % SEED_PERIOD


class DropoutOp(Op):
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by
    ``1 / (1 - p)``, the mask drawn from ``seed``."""

    name = "Dropout"

    def __call__(self, x: Node, seed: Node, p: float) -> Node:
        probability = check_constant(f"Dropout({x.name}): p", p)
        if not 0 <= probability <= 1:
            raise ArgumentError(f"Dropout({x.name}): p must be in [0, 1], got {p!r}")
        return Node(self, [x, seed], {"p": probability})

    def describe(self, node):
        return f"Dropout({short_name(node.inputs[0])}, p={node.attrs['p']:g})"

    def infer_shape(self, node, input_shapes):
        if tuple(input_shapes[1]) != (1,):
            raise ShapeError(f"{node.name}: a seed has shape (1,), got {tuple(input_shapes[1])}")
        return tuple(input_shapes[0])

    def gradient(self, node, output_grad):
        # The same seed gives the same mask: the adjoint drops and scales alike.
        return [dropout_op(output_grad, node.inputs[1], node.attrs["p"]), None]

    def kernel_spec(self, node, input_shapes, output_shape):
        return KernelSpec("dropout", (tuple(output_shape), node.attrs["p"]))

    def reference(self, node, x, seed):
        raise NotImplementedError("dropout's mask comes from its kernel's hash; tests check "
                                  "its statistics instead")


next_seed_op = NextSeedOp()
dropout_op = DropoutOp()

__all__ = ["dropout_op", "next_seed_op"]
