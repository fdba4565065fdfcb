"""Helpers for the graph-layer tests: a numpy interpreter of dlsys graphs, finite
differences, the MLP training graph, and a hypothesis strategy for random graphs.

The interpreter evaluates a graph op by op with each operator's numpy reference
(``Op.reference``, written from the operator's definition and independent of dlsys's
kernels), so it is the reference for the executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from dlsys import autodiff as ad
from dlsys.graph import Node, find_topo_sort
from dlsys.nn import functional as F
from dlsys.ops import ELEMENTWISE_OPS, BroadcastBinaryOp, attention_op
from dlsys.ops.conv import windows
from dlsys.ops.norm import batchnorm2d_op
from dlsys.ops.placeholder import Parameter
from dlsys.ops.reshape import flatten_op

# Binary operators whose operands broadcast (add, mul, sub, div...), from the registry.
BROADCASTING_OPS = [op for op in ELEMENTWISE_OPS if isinstance(op, BroadcastBinaryOp)]
# Values beyond this (exp of exp, long products) would make the finite differences' rounding
# error (about 1e-16 * value / eps) approach the gradient tolerance: such graphs are dropped.
MAX_MAGNITUDE = 1e3


def _softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_eval(nodes: list[Node], feeds: dict[Node, np.ndarray]) -> list[np.ndarray]:
    """Values of ``nodes`` computed in float64 numpy, one operator at a time."""
    value: dict[Node, np.ndarray] = {}
    for node in find_topo_sort(nodes):
        if node.op.is_placeholder:
            # A parameter not fed is bound to the tensor it holds, as in the executor.
            fed = feeds[node] if node in feeds or not node.op.holds_value else node.data.numpy()
            integer = np.asarray(fed).dtype.kind in "iu"  # ids stay ids, as in the executor
            value[node] = np.asarray(fed, dtype=None if integer else np.float64)
        else:
            value[node] = np.asarray(node.op.reference(node, *(value[i] for i in node.inputs)))
    return [value[n] for n in nodes]


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f`` at ``x`` (restored afterwards)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + eps
        up = f()
        x[index] = saved - eps
        down = f()
        x[index] = saved
        grad[index] = (up - down) / (2 * eps)
    return grad


@dataclass
class MLP:
    """The 784-256-100-10 training graph: loss, six gradients, logits."""

    x: Node
    labels: Node
    params: list[Node]
    loss: Node
    grads: list[Node]
    logits: Node

    @property
    def eval_nodes(self) -> list[Node]:
        return [self.loss, *self.grads, self.logits]

    def feeds(self, batch: int, seed: int = 0, sizes=(784, 256, 100, 10)) -> dict:
        rng = np.random.default_rng(seed)
        feeds = {self.x: rng.normal(size=(batch, sizes[0])),
                 self.labels: np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            feeds[self.params[2 * i]] = rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)
            feeds[self.params[2 * i + 1]] = rng.normal(size=(fan_out,)) * 0.1
        return feeds


def build_mlp(layers: int = 3) -> MLP:
    """Biases are broadcast by ``+`` (numpy broadcasting), as the front end writes them."""
    x, labels = ad.Variable("X"), ad.Variable("y_")
    params: list[Node] = []
    h = x
    for i in range(1, layers + 1):
        w, b = ad.Variable(f"W{i}"), ad.Variable(f"b{i}")
        params += [w, b]
        h = ad.matmul_op(h, w) + b
        if i < layers:
            h = ad.relu_op(h)
    loss = ad.softmaxcrossentropy_op(h, labels)
    return MLP(x, labels, params, loss, ad.gradients(loss, params), h)


# ---------------------------------------------------------------- random graphs
DIMS = st.integers(1, 3)
IMAGE_DIMS = st.integers(1, 6)  # image height and width: room for strided, padded windows


def _window_node(draw, op: str, x: Node, shape: tuple, placeholder) -> Node:
    """A convolution (with a new filter placeholder) or a pooling of the 4-d value ``x``,
    with a window, stride and padding that fit its shape by construction."""
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    sizes = [draw(st.integers(max(1, 2 * p), min(3, n + 2 * p)))
             for n, p in zip(shape[2:], padding)]
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if op == "conv2d":
        w = placeholder((draw(DIMS), shape[1], *sizes))
        return ad.conv2d_op(x, w, stride, padding)
    # Pooling padding is at most half the window (checked by the shape rule, as PyTorch).
    padding = tuple(min(p, k // 2) for p, k in zip(padding, sizes))
    pool = ad.maxpool2d_op if op == "maxpool" else ad.avgpool2d_op
    return pool(x, tuple(sizes), None if draw(st.booleans()) else stride, padding)


def _max_pool_gaps_are_clear(x: np.ndarray, attrs: dict) -> bool:
    """Whether, in every window, the maximum beats every other value by 1e-3 or ties it
    exactly."""
    view = windows(x, attrs["kernel"], attrs["stride"], attrs["padding"], value=-np.inf)
    flat = np.sort(view.reshape(*view.shape[:4], -1), axis=-1)
    gaps = flat[..., -1:] - flat[..., :-1]
    return bool(np.all((gaps == 0) | (gaps > 1e-3) | np.isnan(gaps)))


def _batchnorm_node(draw, x: Node, shape: tuple, placeholder) -> Node:
    """Batch norm in training mode over the 4-d value ``x`` (new gamma and beta placeholders,
    running statistics as parameters), its momentum often at an end of [0, 1]: a
    coefficient of 0 or 1 lets TE simplify a term of the running update away, which once
    broke the kernel's build. eps stays where finite differences hold (a tiny one makes
    x_hat's slope too steep for them); the kernel tests cover its extremes."""
    channels = (shape[1],)
    momentum = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    eps = draw(st.sampled_from([1e-5, 1.0]) | st.floats(1e-3, 10.0))
    running = [Parameter(np.zeros(channels), "running_mean"),
               Parameter(np.ones(channels), "running_var")]
    return batchnorm2d_op(x, placeholder(channels), placeholder(channels), *running,
                          training=True, momentum=momentum, eps=eps)


def _transformer_node(draw, op: str, x: Node, shape: tuple, placeholder) -> Node:
    """Layer norm over the last axis (new gamma and beta placeholders), softmax or
    log-softmax along a drawn axis, or a softmax of causally masked scores."""
    if op == "layernorm":
        # eps where finite differences hold: rows of equal values make x_hat's slope 1/sqrt(eps).
        eps = draw(st.sampled_from([1e-5, 0.1, 1.0]))
        return ad.layernorm_op(x, placeholder(shape[-1:]), placeholder(shape[-1:]), eps)
    if op == "causal_softmax":
        return ad.softmax_op(ad.causal_mask_op(x))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return (ad.softmax_op if op == "rowsoftmax" else ad.logsoftmax_op)(x, axis)


def _index_node(draw, op: str, x: Node, shape: tuple, placeholder, rng) -> Node:
    """An embedding lookup in the matrix ``x`` (its rows the table) by a new placeholder of
    integer ids, or PyTorch's cross-entropy of the logits ``x`` against integer targets
    (some ignored, label smoothing drawn): the integer feeds of a transformer."""
    ids_dtype = draw(st.sampled_from([np.int32, np.int64]))
    if op == "embedding":
        ids_shape = tuple(draw(st.lists(DIMS, min_size=1, max_size=2)))
        ids = rng.integers(0, shape[0], ids_shape).astype(ids_dtype)
        return ad.embedding_op(x, placeholder(ids_shape, differentiable=False, values=ids))
    targets = rng.integers(0, shape[1], shape[0]).astype(ids_dtype)
    ignore_index = draw(st.sampled_from([-100, 0]))
    targets[0] = ignore_index if draw(st.booleans()) else targets[0]
    assume(np.any(targets != ignore_index))  # every row ignored is NaN, as in PyTorch
    smoothing = draw(st.sampled_from([0.0, 0.1]))
    target = placeholder(shape[:1], differentiable=False, values=targets)
    return F.cross_entropy(x, target, ignore_index=ignore_index, label_smoothing=smoothing)


def _stack_node(draw, op: str, x: Node, shape: tuple, placeholder) -> Node:
    """A product of the stack ``x`` (rank 3 or 4) with a new operand, its batch axes
    broadcast (some squeezed to 1, or none: a matrix), either side transposed; or the
    fused attention with ``x`` as the queries and new keys and values of another length."""
    if op == "attention":
        keys = draw(DIMS)
        k = placeholder((*shape[:-2], keys, shape[-1]))
        v = placeholder((*shape[:-2], keys, draw(DIMS)))
        # Causal needs a key for every query: j <= i + S - T leaves none when S < T.
        causal = keys >= shape[-2] and draw(st.booleans())
        return attention_op(x, k, v, None, causal)
    ta, tb = draw(st.booleans()), draw(st.booleans())
    inner = shape[-2] if ta else shape[-1]
    n = draw(DIMS)
    batch = tuple(1 if draw(st.booleans()) else d for d in shape[:-2])
    batch = () if draw(st.booleans()) else batch
    other = placeholder((*batch, n, inner) if tb else (*batch, inner, n))
    return ad.matmul_op(x, other, ta, tb)


@dataclass
class RandomGraph:
    """A random dlsys graph with its feeds and what may be differentiated."""

    output: Node
    values: list[Node]                         # every value built, in build order
    feeds: dict[Node, np.ndarray] = field(default_factory=dict)
    differentiable: list[Node] = field(default_factory=list)  # placeholders with real inputs
    relu_inputs: list[Node] = field(default_factory=list)
    has_softmax: bool = False


@st.composite
def random_graphs(draw, max_ops: int = 7, allow_softmax: bool = True,
                  integer_feeds: bool = False) -> RandomGraph:
    """A chain of random operators over small random shapes, each compatible by construction.

    New placeholders appear where an operator needs a second operand (broadcast partners,
    matmul right-hand sides, broadcast targets, labels), so every operator is reachable from
    any current value. Feeds are drawn from a seeded numpy stream, not by hypothesis, which
    keeps examples small to shrink while values stay well spread. ``allow_softmax=False``
    leaves out softmax, which has no gradient (the loss, which has one, stays). Inputs an
    operator needs positive (log's, a divisor) are made so; a graph with a value beyond
    ``MAX_MAGNITUDE`` (or NaN) is rejected. ``integer_feeds=True`` draws the operators
    that read integer ids (embedding, cross-entropy) six times as often.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    graph = RandomGraph(output=None, values=[])  # type: ignore[arg-type]
    count = [0]

    def placeholder(shape, differentiable=True, values=None):
        count[0] += 1
        node = ad.Variable(f"p{count[0]}")
        graph.feeds[node] = rng.normal(size=shape) if values is None else values
        if differentiable:
            graph.differentiable.append(node)
        return node

    def operands(op, entries):
        """The operands of ``op``: each entry a node, or a shape for a fresh placeholder.
        Where ``op`` needs a positive input (``positive_inputs``) a placeholder is drawn
        from [0.5, 1.5) and a computed node becomes ``x * x + 0.5`` (smooth, so that
        gradients stay checkable)."""
        nodes = []
        for i, entry in enumerate(entries):
            positive = i in op.positive_inputs
            if not isinstance(entry, Node):
                values = rng.uniform(0.5, 1.5, entry) if positive else None
                nodes.append(placeholder(entry, values=values))
            else:
                nodes.append(entry * entry + 0.5 if positive else entry)
        return nodes

    # Mostly matrices, since matmul, softmax and the loss need them; 4-d images (with room
    # for a window) for convolution and pooling.
    ndim = draw(st.sampled_from([2, 2, 1, 3, 4, 4]))
    first_shape = tuple(draw(st.lists(DIMS, min_size=ndim, max_size=ndim)))
    if ndim == 4:
        first_shape = first_shape[:2] + (draw(IMAGE_DIMS), draw(IMAGE_DIMS))
    current = placeholder(first_shape)
    shapes = {current: first_shape}
    graph.values.append(current)
    for _ in range(draw(st.integers(3, max_ops))):
        shape = shapes[current]
        same_shape = [v for v in graph.values[:-1] if shapes[v] == shape]
        # Only the operators that apply at this shape, so that no draw is wasted.
        # Every registered elementwise operator, by its index in ELEMENTWISE_OPS, and every
        # broadcasting one again with an operand of another shape.
        ops = [("broadcast", i) for i in range(len(BROADCASTING_OPS))]
        ops += list(range(len(ELEMENTWISE_OPS))) + ["sum", "mean"]
        ops += ["reuse"] if same_shape else []
        ops += ["broadcastto"] if len(shape) < 3 else []
        ops += ["rsum0"] if len(shape) >= 2 else []
        if len(shape) == 2:
            ops += ["matmul", "matmul", "sce"] + (["softmax"] if allow_softmax else [])
            ops += ["embedding", "cross_entropy"] * (6 if integer_feeds else 1)
        # The transformer's row-wise operators, along any axis and on any rank.
        ops += ["layernorm", "rowsoftmax", "logsoftmax"]
        ops += ["causal_softmax"] if len(shape) >= 2 else []
        ops += ["slice"]
        # Products of stacks (batch axes broadcast as numpy.matmul's) and attention.
        ops += ["stack_matmul", "attention"] if len(shape) >= 3 else []
        if len(shape) == 4:
            # Weighted up against the many elementwise operators, so that windows show up.
            ops += ["conv2d", "maxpool", "avgpool"] * 4 + ["global_avgpool", "flatten"]
            ops += ["batchnorm"] * 2
        op = draw(st.sampled_from(ops))
        if isinstance(op, tuple):
            binary = BROADCASTING_OPS[op[1]]
            # The partner's shape is a broadcast-compatible variant: a suffix of the axes,
            # with some axes squeezed to 1, on either side of the operator.
            keep = draw(st.integers(0, len(shape) - 1))
            partner = tuple(1 if draw(st.booleans()) else d for d in shape[keep:])
            if draw(st.booleans()):
                # Or the other way round: current gets broadcast up to the partner's shape.
                partner = tuple(draw(DIMS) if d == 1 else d for d in shape)
                partner = (draw(DIMS),) * draw(st.integers(0, len(shape) < 3)) + partner
            entries = [current, partner] if draw(st.booleans()) else [partner, current]
            node = binary(*operands(binary, entries))
        elif isinstance(op, int):
            elementwise = ELEMENTWISE_OPS[op]
            node = elementwise.example(operands(elementwise,
                                                [current] + [shape] * (elementwise.arity - 1)))
            if elementwise.sign_only_input is not None or elementwise.keeps_positive_sign:
                graph.relu_inputs.append(current)
        elif op in ("sum", "mean"):
            # A subset of the axes, each written as a positive or a negative index, or None.
            chosen = draw(st.lists(st.sampled_from(range(len(shape))), unique=True))
            axes = tuple(d - len(shape) if draw(st.booleans()) else d for d in chosen)
            axes = None if draw(st.booleans()) else axes
            reduce = ad.sum_op if op == "sum" else ad.mean_op
            node = reduce(current, axes, keepdims=draw(st.booleans()))
        elif op == "matmul":
            ta, tb = draw(st.booleans()), draw(st.booleans())
            inner = shape[0] if ta else shape[1]
            n = draw(DIMS)
            other = placeholder((n, inner) if tb else (inner, n))
            node = ad.matmul_op(current, other, ta, tb)
        elif op == "broadcastto":
            target = tuple(draw(DIMS) if d == 1 else d for d in shape)
            target = (draw(DIMS),) * draw(st.integers(0, 1)) + target
            node = ad.broadcastto_op(current, placeholder(target, differentiable=False))
        elif op == "slice":
            # A run along a drawn axis (negative half the time), the whole axis included.
            axis = draw(st.integers(0, len(shape) - 1))
            start = draw(st.integers(0, shape[axis] - 1))
            stop = draw(st.integers(start + 1, shape[axis]))
            node = ad.slice_op(current, axis - len(shape) if draw(st.booleans()) else axis,
                               start, stop)
        elif op == "rsum0":
            node = ad.reducesumaxiszero_op(current)
        elif op in ("conv2d", "maxpool", "avgpool"):
            node = _window_node(draw, op, current, shape, placeholder)
            if op == "maxpool":
                # A near tie inside a window would put the max's kink inside a finite
                # difference (exact ties, broadcast copies of one value, are fine).
                value = numpy_eval([current], graph.feeds)[0]
                assume(_max_pool_gaps_are_clear(value, node.attrs))
        elif op == "batchnorm":
            node = _batchnorm_node(draw, current, shape, placeholder)
        elif op == "global_avgpool":
            node = ad.global_avgpool_op(current)
        elif op == "flatten":
            node = flatten_op(current)
        elif op == "softmax":
            node = ad.softmax_op(current)
            graph.has_softmax = True
        elif op in ("layernorm", "rowsoftmax", "logsoftmax", "causal_softmax"):
            node = _transformer_node(draw, op, current, shape, placeholder)
        elif op in ("stack_matmul", "attention"):
            node = _stack_node(draw, op, current, shape, placeholder)
        elif op in ("embedding", "cross_entropy"):
            node = _index_node(draw, op, current, shape, placeholder, rng)
        elif op == "sce":
            labels = _softmax(rng.normal(size=shape))
            node = ad.softmaxcrossentropy_op(
                current, placeholder(shape, differentiable=False, values=labels))
        else:
            # Combine with an earlier value so values have several readers (fan-out).
            earlier = draw(st.sampled_from(same_shape))
            node = ad.add_op(current, earlier) if draw(st.booleans()) else current * earlier
        value = numpy_eval([node], graph.feeds)[0]
        assume(np.abs(value).max() < MAX_MAGNITUDE)
        shapes[node] = tuple(value.shape)
        graph.values.append(node)
        current = node
    graph.output = current
    return graph
