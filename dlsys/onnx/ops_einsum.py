"""ONNX's Einsum as dlsys graph nodes: the contractions attention and dense layers write,
as transposes, reshapes and (batched) matrix products (see ``ops``).

The equation is parsed into one list of labels per operand (an ellipsis becomes labels of
its own, aligned from the right as numpy broadcasts them) and lowered onto operators that
have gradients, so an imported Einsum fine-tunes like the rest of the graph:

- a label repeated in one operand (a diagonal, ``ii->i``) is a strided slice of the two
  axes flattened together;
- a label of one operand only that the result drops is summed out (``sum_op``), and so is
  a size-1 axis that another operand broadcasts along;
- two operands are contracted by one ``matmul_op`` over their shared batch labels (``bhqd,
  bhkd->bhqk`` is a batched ``Q @ K^T``), with reshapes folding groups of labels into the
  matrix axes and the transpose flags sparing a copy where they can, or multiplied with
  broadcasting where they share no label to sum (``i,j->ij``, ``bi,bi->bi``);
- more operands are contracted left to right; the result is transposed to the output's
  order.

Constants alone are folded with numpy's einsum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlsys.graph import Node
from dlsys.onnx.ops import Context, converter
from dlsys.onnx.ops_tensor import as_node, is_constant
from dlsys.ops.elementwise import mul_op
from dlsys.ops.layout import transpose_op
from dlsys.ops.linalg import matmul_op
from dlsys.ops.reduce import sum_op
from dlsys.ops.reshape import reshape_op
from dlsys.ops.slicing import slice_op

ELLIPSIS = "..."


@dataclass
class Term:
    """An operand (or a partial result) of the contraction: its node, one label per axis
    and each axis's size (None where it is known only at run time). A term whose labels
    are all summed is a node of shape (1,) with no labels."""

    node: Node
    labels: list[str]
    dims: list[int | None]


# ------------------------------------------------------------------ parsing
def parse_equation(ctx: Context, equation: str, ranks: list[int]) -> tuple[list[list[str]],
                                                                         list[str]]:
    """The labels of each operand's axes and of the output's, for operands of ``ranks``.
    Letters are labels; an ellipsis stands for as many axes as the operand has beyond its
    letters, labelled ``".0"``, ``".1"``... counted so that they align from the right."""
    text = equation.replace(" ", "")
    explicit = "->" in text
    inputs_text, _, output_text = text.partition("->")
    operands = inputs_text.split(",")
    if len(operands) != len(ranks):
        raise _refuse(ctx, equation, f"it names {len(operands)} operand(s), the node has "
                                     f"{len(ranks)}")
    spans = []
    for i, (term, rank) in enumerate(zip(operands, ranks)):
        letters = term.replace(ELLIPSIS, "")
        if not letters.isalpha() and letters or term.count(ELLIPSIS) > 1 \
                or ELLIPSIS not in term and "." in term:
            raise _refuse(ctx, equation, f"operand {i}'s subscripts {term!r} must be letters "
                                         f"and at most one ellipsis")
        span = rank - len(letters)
        if span < 0 or span > 0 and ELLIPSIS not in term:
            raise _refuse(ctx, equation, f"operand {i}'s subscripts {term!r} do not match "
                                         f"its rank {rank}")
        spans.append(span if ELLIPSIS in term else 0)
    width = max(spans, default=0)
    labels = [_expand(term, span, width) for term, span in zip(operands, spans)]
    if explicit:
        if ELLIPSIS in output_text and not any(ELLIPSIS in t for t in operands):
            raise _refuse(ctx, equation, "the output has an ellipsis and no operand has")
        letters = output_text.replace(ELLIPSIS, "")
        if letters and not letters.isalpha() or output_text.count(ELLIPSIS) > 1:
            raise _refuse(ctx, equation, f"the output's subscripts {output_text!r} must be "
                                         f"letters and at most one ellipsis")
        output = _expand(output_text, width, width)
    else:
        # numpy's implicit output: the broadcast axes, then every letter used once, sorted.
        counts: dict[str, int] = {}
        for term in labels:
            for label in term:
                counts[label] = counts.get(label, 0) + 1
        output = [f".{k}" for k in range(width)]
        output += sorted(c for c, n in counts.items() if n == 1 and not c.startswith("."))
    if len(set(output)) != len(output):
        raise _refuse(ctx, equation, "the output names a label more than once")
    unknown = [c for c in output if not any(c in term for term in labels)]
    if unknown:
        raise _refuse(ctx, equation, f"the output's label {unknown[0]!r} is in no operand")
    return labels, output


def _expand(term: str, span: int, width: int) -> list[str]:
    """``term``'s labels, its ellipsis as the last ``span`` of ``width`` broadcast labels."""
    head, _, tail = term.partition(ELLIPSIS)
    middle = [f".{k}" for k in range(width - span, width)] if ELLIPSIS in term else []
    return [*head, *middle, *tail]


def _refuse(ctx: Context, equation: str, text: str):
    return ctx.refuse(f"equation {equation!r}: {text}")


# ------------------------------------------------------------------ the converter
@converter("Einsum", attrs=("equation",))
def einsum(ctx, *operands):
    equation = ctx.attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    if not isinstance(equation, str) or not equation:
        raise ctx.refuse("the equation attribute is required")
    if not operands or any(v is None for v in operands):
        raise _refuse(ctx, equation, "every operand is required")
    if all(is_constant(v) for v in operands):
        try:
            return np.asarray(np.einsum(equation, *operands))
        except ValueError as err:
            raise _refuse(ctx, equation, str(err)) from None
    terms = []
    for i, value in enumerate(operands):
        dims = ctx.input_dims(i, value)
        if dims is None:
            raise _refuse(ctx, equation, f"the rank of operand {i} ({ctx.node.input[i]!r}) "
                                         f"is unknown")
        terms.append((as_node(ctx, i, value), list(dims)))
    labels, output = parse_equation(ctx, equation, [len(d) for _, d in terms])
    lowering = _Lowering(ctx, equation)
    parts = [lowering.distinct(Term(node, list(names), dims))
             for (node, dims), names in zip(terms, labels)]
    lowering.broadcast_sizes(parts)
    result = parts[0]
    for k, other in enumerate(parts[1:], start=1):
        # Labels a later operand or the output still reads are kept; the others are summed.
        keep = set(output).union(*(p.labels for p in parts[k + 1:]))
        result = lowering.contract(result, other, keep)
    result = lowering.sum_out(result, set(output))
    return lowering.arrange(result, output)


class _Lowering:
    """The steps of one Einsum node's lowering, each refusing (naming the node and the
    equation) what it cannot build."""

    def __init__(self, ctx: Context, equation: str):
        self.ctx = ctx
        self.equation = equation

    def refuse(self, text: str):
        return _refuse(self.ctx, self.equation, text)

    def reshape(self, term: Term, spec: list[int], labels: list[str],
                dims: list[int | None]) -> Term:
        """``term`` reshaped to ``spec`` (0 keeps the input's size at that position, -1 is
        the one size left unknown), now with ``labels`` of ``dims``."""
        if not spec:  # no axis left: dlsys holds a scalar as (1,)
            spec, dims = [1], []
        if [d for d in spec if d == -1][1:]:
            raise self.refuse(f"reshaping {_show(term.dims)} to {_show(dims)} needs more "
                              f"than one size that is known only at run time")
        # The same shape already (an unknown size's -1 is that size, being the only one).
        if len(spec) == len(term.dims) and spec and all(
                s in (0, d) or s == -1 and d is None for s, d in zip(spec, term.dims)):
            return Term(term.node, labels, dims)
        return Term(reshape_op(term.node, tuple(spec)), labels, dims)

    def distinct(self, term: Term) -> Term:
        """``term`` with each label on one axis: a repeated label's diagonal taken."""
        while True:
            repeated = next((c for c in term.labels if term.labels.count(c) > 1), None)
            if repeated is None:
                return term
            term = self.diagonal(term, repeated)

    def diagonal(self, term: Term, label: str) -> Term:
        """The diagonal of the first two axes labelled ``label``, as the last axis: both
        moved last and flattened, every ``(n + 1)``-th element of them sliced."""
        first, second = [d for d, c in enumerate(term.labels) if c == label][:2]
        sizes = {term.dims[first], term.dims[second]} - {None}
        if len(sizes) != 1:
            raise self.refuse(f"the diagonal of label {label!r} needs its size known when the "
                              f"graph is built, and equal on both axes; they are "
                              f"{_show([term.dims[first], term.dims[second]])}")
        (n,) = sizes
        rest = [d for d in range(len(term.labels)) if d not in (first, second)]
        moved = self.transpose(term, [*rest, first, second])
        dims = [moved.dims[d] for d in range(len(rest))]
        flat = self.reshape(moved, [0] * len(rest) + [n * n],
                            [moved.labels[d] for d in range(len(rest))] + ["#"],
                            [*dims, n * n])
        node = slice_op(flat.node, len(rest), 0, n * n, n + 1)
        return Term(node, [*flat.labels[:-1], label], [*dims, n])

    def transpose(self, term: Term, order: list[int]) -> Term:
        if order == list(range(len(order))):
            return term
        return Term(transpose_op(term.node, tuple(order)), [term.labels[d] for d in order],
                    [term.dims[d] for d in order])

    def broadcast_sizes(self, parts: list[Term]) -> None:
        """Check each label's sizes across operands; a size-1 axis against a larger size
        (numpy's broadcasting) is summed out of its operand, which is constant along it."""
        sizes: dict[str, set[int]] = {}
        for term in parts:
            for label, dim in zip(term.labels, term.dims):
                sizes.setdefault(label, set()).update({dim} - {None})
        for label, found in sizes.items():
            if len(found - {1}) > 1:
                raise self.refuse(f"label {label!r} has sizes {sorted(found)} in different "
                                  f"operands")
        for i, term in enumerate(parts):
            flat = [d for d, (label, dim) in enumerate(zip(term.labels, term.dims))
                    if dim == 1 and sizes[label] - {1}]
            if flat:
                parts[i] = self.sum_axes(term, flat)

    def sum_axes(self, term: Term, axes: list[int]) -> Term:
        kept = [d for d in range(len(term.labels)) if d not in axes]
        if not axes:
            return term
        return Term(sum_op(term.node, tuple(axes)), [term.labels[d] for d in kept],
                    [term.dims[d] for d in kept])

    def sum_out(self, term: Term, keep: set[str]) -> Term:
        """``term`` summed over the labels not in ``keep``."""
        return self.sum_axes(term, [d for d, c in enumerate(term.labels) if c not in keep])

    def contract(self, a: Term, b: Term, keep: set[str]) -> Term:
        """The product of ``a`` and ``b`` summed over their shared labels not in ``keep``,
        labelled (batch, a's kept, b's kept)."""
        a = self.sum_out(a, keep | set(b.labels))
        b = self.sum_out(b, keep | set(a.labels))
        batch = [c for c in a.labels if c in b.labels and c in keep]
        summed = [c for c in a.labels if c in b.labels and c not in keep]
        only_a = [c for c in a.labels if c not in b.labels]
        only_b = [c for c in b.labels if c not in a.labels]
        size = _sizes(a, b)
        if not summed:
            return self.multiply(a, b, batch, only_a, only_b, size)
        # A as (batch, M, K) or (batch, K, M) with trans_A, whichever is its order already;
        # B likewise as (batch, K, N) or (batch, N, K).
        a, trans_a = self.matrix(a, batch, only_a, summed)
        b, trans_b = self.matrix(b, batch, summed, only_b)
        product = matmul_op(a.node, b.node, trans_a, trans_b)
        rows, cols = _group_size(only_a, size), _group_size(only_b, size)
        result = Term(product, [*batch, "#rows", "#cols"],
                      [size[c] for c in batch] + [rows, cols])
        labels = [*batch, *only_a, *only_b]
        dims = [size[c] for c in labels]
        return self.reshape(result, [0] * len(batch) + _spec(dims[len(batch):]), labels,
                            dims)

    def matrix(self, term: Term, batch: list[str], rows: list[str],
               cols: list[str]) -> tuple[Term, bool]:
        """``term`` as a stack of matrices ``(batch, rows, cols)``, or ``(batch, cols,
        rows)`` and True (to be transposed by the product) where that is its order."""
        size = dict(zip(term.labels, term.dims))
        transposed = term.labels == [*batch, *cols, *rows] and term.labels != [*batch, *rows,
                                                                                *cols]
        first, second = (cols, rows) if transposed else (rows, cols)
        order = [term.labels.index(c) for c in [*batch, *first, *second]]
        term = self.transpose(term, order)
        groups = [_group_size(first, size), _group_size(second, size)]
        spec = [0] * len(batch) + _spec(groups)
        return self.reshape(term, spec, [*batch, "#first", "#second"],
                            [size[c] for c in batch] + groups), transposed

    def multiply(self, a: Term, b: Term, batch: list[str], only_a: list[str],
                 only_b: list[str], size: dict) -> Term:
        """``a * b`` broadcast to (batch, a's labels, b's labels): no label summed."""
        a = self.transpose(a, [a.labels.index(c) for c in [*batch, *only_a]])
        b = self.transpose(b, [b.labels.index(c) for c in [*batch, *only_b]])
        labels = [*batch, *only_a, *only_b]
        # Size-1 axes where the other operand's labels go; numpy's broadcasting aligns the
        # trailing axes, so ``a`` needs them only after its own.
        a = self.reshape(a, [0] * len(a.labels) + [1] * len(only_b),
                         [*a.labels, *("#" + c for c in only_b)], [*a.dims, *[1] * len(only_b)])
        b = self.reshape(b, [0] * len(batch) + [1] * len(only_a) + _spec(b.dims[len(batch):]),
                         [*batch, *("#" + c for c in only_a), *only_b],
                         [*b.dims[:len(batch)], *[1] * len(only_a), *b.dims[len(batch):]])
        return Term(mul_op(a.node, b.node), labels, [size[c] for c in labels])

    def arrange(self, term: Term, output: list[str]) -> Node:
        """The result in the output's axis order."""
        if not output:
            return term.node
        return self.transpose(term, [term.labels.index(c) for c in output]).node


def _sizes(a: Term, b: Term) -> dict[str, int | None]:
    """Each label's size across both operands: the larger where one broadcasts (1)."""
    size: dict[str, int | None] = {}
    for label, dim in [*zip(a.labels, a.dims), *zip(b.labels, b.dims)]:
        known = size.get(label)
        size[label] = dim if known is None or dim is not None and dim > known else known
    return size


def _group_size(labels: list[str], size: dict) -> int | None:
    """The size of ``labels`` flattened into one axis (1 for none), None if one is unknown."""
    dims = [size[c] for c in labels]
    return None if None in dims else math.prod(dims)


def _spec(dims: list[int | None]) -> list[int]:
    """``dims`` as a reshape target: an unknown size as -1."""
    return [-1 if d is None else d for d in dims]


def _show(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
