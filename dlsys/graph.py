"""The computation graph: nodes, the operator interface, and graph traversal.

A graph is plain data: each ``Node`` holds its operator, its input nodes and the operator's
attributes. Everything else (gradients, shape inference, fusion, memory planning,
execution) is a pass over this structure. An ``Op`` declares, in one place, everything the
passes need to know about it: its shape rule, its gradient, which input it may overwrite
in place, how it fuses, and which kernel runs it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dlsys.errors import GradientError

Shape = tuple[int, ...]


class Node:
    """A value in the graph: the output of ``op`` applied to ``inputs``.

    Arithmetic (``a + b``, ``a * 2``) is installed by ``dlsys.ops``, which defines the
    operators it builds; the graph layer itself knows no operator.
    """

    __slots__ = ("op", "inputs", "attrs", "name", "id")
    _count = 0

    def __init__(self, op: Op, inputs: Sequence[Node], attrs: dict[str, Any] | None = None,
                 name: str | None = None):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = attrs or {}
        Node._count += 1
        self.id = Node._count
        self.name = name if name is not None else op.describe(self)

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


class Op:
    """An operator: everything the passes need to know about it, declared in one place.

    Subclasses override the hooks and traits they need; the defaults say "not supported".
    Passes ask an operator what it *is* through these, never what it is called.

    Hooks:
    - ``infer_shape(node, input_shapes)``: the output shape, or raise ``ShapeError``.
    - ``gradient(node, output_grad)``: one gradient node per input, ``None`` for an input that
      gets no gradient (it only lends its shape, or it is a constant such as labels).
    - ``kernel_inputs(node)``: the inputs whose *values* the kernel reads (the rest only
      lend their shape, so their buffers need not stay alive for this node).
    - ``is_alias(node, input_shapes)``: True when, at these shapes, the output equals input 0
      and needs no kernel (e.g. summing a tensor to its own shape).
    - ``kernel_spec(node, input_shapes, output_shape)``: the ``KernelSpec`` that computes the
      node, called with the kernel inputs' tensors then the output tensor.
    - ``epilogue(node, inputs, chain_input, shapes)``: how this node, reading ``inputs``,
      joins a fusion anchor's kernel when ``chain_input`` is the running result, as
      ``(Epilogue, operand nodes)``, or ``None``.
    - ``fused_kernel_spec(node, shapes, epilogue)``: for an anchor, its kernel with the
      ``Epilogue`` steps applied to its result.
    - ``absorb_kernel_spec(node, other, shapes, spec)``: where this operator's kernel
      (``spec``) can also compute ``other``'s value (a node of operator ``absorbs``), the
      kernel writing both (this node's output first), else ``None``.
    - ``packed_kernel_spec(node, shapes, spec, dtype)``: for an operator with a
      ``packable_input``, the node computing that input in the layout the kernel reads and
      the kernel ``spec`` reading it so, or ``None`` where packing would not pay.
    - ``reference(node, *arrays)``: the value in numpy, from the definition: the oracle of
      the tests, never used to compute.
    - ``index_bounds(node, shapes)``: for each of ``index_inputs``, the ``IndexBounds`` its
      values must keep (the embedding's row count), checked where the ids are fed.
    - ``index_kernel_spec(node, input_shapes, output_shape, index_dtypes)``: the kernel of an
      operator with ``index_inputs`` (then ``optional_index_inputs``), for the types they
      are fed in (called instead of ``kernel_spec``).
    - ``flops(node, input_shapes, output_shape)``: about how many arithmetic operations the
      node's kernel does (one per output element unless the operator says more: a matmul's
      multiply-adds), what recomputation under a memory budget weighs its choices by.

    Traits:
    - ``is_placeholder``: a value from outside the graph, fed at run time; ``holds_value``:
      a placeholder whose node holds its own tensor (``node.data``, a parameter), which
      the executor binds unless the caller feeds another value.
    - ``inplace_input``: index of an input whose buffer the output may take over when that
      input dies here (elementwise kernels that read each element before writing it).
    - ``fusion_anchor``: a heavy op (matmul) whose elementwise consumers may join its kernel.
    - ``broadcasts_input``: the output is input 0 broadcast to a shape (so a consumer may
      read input 0 itself).
    - ``sign_only_input``: index of an input read only through ``x > 0``.
    - ``keeps_positive_sign``: the output is positive exactly where input 0 is (ReLU), so
      it may stand in for input 0 in a ``sign_only_input``.
    - ``absorbs``: the operator whose nodes ``absorb_kernel_spec`` can compute too.
    - ``packable_input``: index of an input the kernel re-lays out on every call (a
      matmul's B, copied into panels); where that input is constant (weights in an
      inference session) the layout can be made once, ahead of the runs.
    - ``index_inputs``: the inputs read as integer indices (token ids, class indices): the
      placeholder feeding one is fed an int32 or int64 array, which keeps its type; every
      other input of every operator is a floating-point value.
    - ``optional_index_inputs``: inputs that are integer indices when fed an integer array
      and floating-point values otherwise (cross-entropy targets: class indices, or
      probability rows, as PyTorch's); ``index_kernel_spec`` is told which.
    - ``keeps_dtype``: the output has input 0's element type (a reshaping alias, which may
      pass ids on); other outputs are floating-point.
    - ``splits_rows``: the inputs read row by row along axis 0 (the batch): row n of the
      output is computed from row n of each of them (or from the whole of one broadcast
      along that axis) and from the whole of every other input, so a batch may be computed
      in slices of rows (``passes.batch_split``): a convolution's images, an elementwise
      operator's operands.
    - ``updates_state``: index of an input that holds a value (a parameter or buffer) which
      the kernel overwrites with the node's value: the node *is* the new state (a dropout
      seed advanced, running statistics updated). Such a step always runs, and no later step
      may read the old state.
    """

    name = "Op"
    is_placeholder = False
    holds_value = False
    inplace_input: int | None = None
    fusion_anchor = False
    broadcasts_input = False
    sign_only_input: int | None = None
    keeps_positive_sign = False
    absorbs: Op | None = None
    updates_state: int | None = None
    packable_input: int | None = None
    index_inputs: tuple[int, ...] = ()
    optional_index_inputs: tuple[int, ...] = ()
    keeps_dtype = False
    splits_rows: tuple[int, ...] = ()

    def describe(self, node: Node) -> str:
        args = ", ".join(short_name(i) for i in node.inputs)
        return f"{self.name}({args})"

    def infer_shape(self, node: Node, input_shapes: list[Shape]) -> Shape:
        raise NotImplementedError(f"{self.name} has no shape rule")

    def gradient(self, node: Node, output_grad: Node) -> list[Node | None]:
        raise GradientError(f"{node.name}: operator {self.name} has no gradient")

    def kernel_inputs(self, node: Node) -> list[Node]:
        return node.inputs

    def is_alias(self, node: Node, input_shapes: list[Shape]) -> bool:
        return False

    def kernel_spec(self, node: Node, input_shapes: list[Shape], output_shape: Shape):
        raise NotImplementedError(f"{self.name} has no kernel")

    def epilogue(self, node: Node, inputs: tuple[Node, ...], chain_input: Node,
                 shapes: dict[Node, Shape]) -> tuple[Any, list[Node]] | None:
        return None

    def fused_kernel_spec(self, node: Node, shapes: dict[Node, Shape], epilogue: tuple):
        raise NotImplementedError(f"{self.name} is not a fusion anchor")

    def absorb_kernel_spec(self, node: Node, other: Node, shapes: dict[Node, Shape], spec):
        return None

    def packed_kernel_spec(self, node: Node, shapes: dict[Node, Shape], spec, dtype: str):
        return None

    def reference(self, node: Node, *inputs):
        raise NotImplementedError(f"{self.name} has no numpy reference")

    def index_bounds(self, node: Node, shapes: dict[Node, Shape]) -> dict[int, IndexBounds]:
        return {}

    def index_kernel_spec(self, node: Node, input_shapes: list[Shape], output_shape: Shape,
                          index_dtypes: tuple[str, ...]):
        raise NotImplementedError(f"{self.name} reads no integer indices")

    def flops(self, node: Node, input_shapes: list[Shape], output_shape: Shape) -> int:
        return math.prod(output_shape)


@dataclass(frozen=True)
class IndexBounds:
    """The values integer indices may take: ``[start, stop)``, plus ``also`` (an ignore
    index). ``start`` is negative where the reader counts negative ids from the end, as
    ONNX's Gather and numpy's ``take`` do."""

    stop: int
    also: tuple[int, ...] = ()
    start: int = 0

    def describe(self) -> str:
        extra = "".join(f" or {v}" for v in self.also)
        return f"in [{self.start}, {self.stop}){extra}"


def short_name(node: Node) -> str:
    """The node's name, or ``Op#id`` when the name is too long to nest in another one.

    Derived names nest their inputs' names; without a cut, a gradient node deep in a training
    graph would carry the whole forward pass in its name.
    """
    return node.name if len(node.name) <= 32 else f"{node.op.name}#{node.id}"


def find_topo_sort(node_list: Iterable[Node]) -> list[Node]:
    """Every node the given nodes depend on, inputs before the nodes that use them.

    Iterative, so graphs deeper than Python's recursion limit sort too.
    """
    visited: set[int] = set()
    order: list[Node] = []
    for root in node_list:
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, inputs_done = stack.pop()
            if inputs_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in reversed(node.inputs):
                if id(parent) not in visited:
                    stack.append((parent, False))
    return order
