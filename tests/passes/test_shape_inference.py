"""Shape inference: every operator's shape rule, and mismatches reported before any kernel."""

from __future__ import annotations

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys.errors import FeedError, ShapeError
from dlsys.graph import find_topo_sort
from dlsys.kernels import registry
from dlsys.passes.shape_inference import infer_shapes


def _infer(node, feed_shapes: dict):
    return infer_shapes(find_topo_sort([node]), feed_shapes)[node]


def _vars(*names):
    return [ad.Variable(n) for n in names]


# (builder over two placeholders, shape of a, shape of b, expected output shape)
BINARY_CASES = [
    (ad.add_op, (2, 3), (2, 3), (2, 3)),
    (ad.add_op, (4, 3), (3,), (4, 3)),           # bias row
    (ad.add_op, (3,), (4, 3), (4, 3)),           # broadcast on the left
    (ad.add_op, (4, 1), (1, 5), (4, 5)),         # both sides broadcast
    (ad.mul_op, (2, 1, 3), (4, 1), (2, 4, 3)),
    (ad.mul_op, (1,), (2, 2), (2, 2)),
    (lambda a, b: ad.matmul_op(a, b), (2, 3), (3, 4), (2, 4)),
    (lambda a, b: ad.matmul_op(a, b, True, False), (3, 2), (3, 4), (2, 4)),
    (lambda a, b: ad.matmul_op(a, b, False, True), (2, 3), (4, 3), (2, 4)),
    (lambda a, b: ad.matmul_op(a, b, True, True), (3, 2), (4, 3), (2, 4)),
    (ad.relu_gradient_op, (2, 3), (2, 3), (2, 3)),
    (ad.softmaxcrossentropy_op, (5, 4), (5, 4), (1,)),
    (ad.broadcastto_op, (3,), (2, 3), (2, 3)),          # a new leading axis
    (ad.broadcastto_op, (2, 1), (2, 5), (2, 5)),        # a size-1 axis
    (ad.broadcastto_op, (1, 3), (4, 2, 3), (4, 2, 3)),  # both at once
    (ad.reducesumto_op, (4, 3), (3,), (3,)),
    (ad.reducesumto_op, (4, 3), (4, 1), (4, 1)),
    (ad.reducesumto_op, (2, 3), (2, 3), (2, 3)),
    (ad.conv2d_op, (2, 3, 6, 5), (4, 3, 3, 2), (2, 4, 4, 4)),
    (lambda a, b: a - b, (4, 1), (1, 5), (4, 5)),
    (lambda a, b: a / b, (2, 1, 3), (4, 1), (2, 4, 3)),
    (lambda a, b: a @ b, (2, 3), (3, 4), (2, 4)),
]


@pytest.mark.parametrize("build, shape_a, shape_b, expected", BINARY_CASES)
def test_binary_shape_rules(build, shape_a, shape_b, expected):
    a, b = _vars("a", "b")
    assert _infer(build(a, b), {a: shape_a, b: shape_b}) == expected


UNARY_CASES = [
    (lambda a: a + 2.0, (2, 3), (2, 3)),
    (lambda a: 3.0 * a, (4,), (4,)),
    (ad.relu_op, (2, 1, 3), (2, 1, 3)),
    (ad.softmax_op, (5, 7), (5, 7)),
    (ad.reducesumaxiszero_op, (4, 3), (3,)),
    (ad.reducesumaxiszero_op, (4, 2, 3), (2, 3)),
    (ad.oneslike_op, (3, 2), (3, 2)),
    (ad.zeroslike_op, (7,), (7,)),
    (lambda a: -a, (2, 3), (2, 3)),
    (lambda a: 2 - a, (2, 3), (2, 3)),
    (lambda a: 1 / a, (3,), (3,)),
    (lambda a: a / 4, (3, 1), (3, 1)),
    (ad.exp_op, (2, 3), (2, 3)),
    (ad.log_op, (2, 3), (2, 3)),
    (ad.tanh_op, (2, 3), (2, 3)),
    (ad.sum_op, (4, 3), (1,)),                          # no axis left: (1,), not ()
    (lambda a: ad.sum_op(a, keepdims=True), (4, 3), (1, 1)),
    (lambda a: ad.sum_op(a, axes=0), (4, 3), (3,)),
    (lambda a: ad.sum_op(a, axes=(0, 2)), (4, 2, 3), (2,)),
    (lambda a: ad.sum_op(a, axes=(-1, 0), keepdims=True), (4, 2, 3), (1, 2, 1)),
    (lambda a: ad.sum_op(a, axes=()), (4, 2), (4, 2)),
    (lambda a: ad.sum_op(a, axes=[0]), (5,), (1,)),
    (lambda a: ad.mean_op(a, axes=-2), (4, 2, 3), (4, 3)),
    (lambda a: ad.mean_op(a, keepdims=True), (4, 2, 3), (1, 1, 1)),
]


@pytest.mark.parametrize("build, shape, expected", UNARY_CASES)
def test_unary_shape_rules(build, shape, expected):
    (a,) = _vars("a")
    assert _infer(build(a), {a: shape}) == expected


def test_softmax_cross_entropy_gradient_shape():
    y, labels, g = _vars("y", "y_", "g")
    node = ad.softmaxcrossentropy_gradient_op(y, labels, g)
    assert _infer(node, {y: (5, 4), labels: (5, 4), g: (1,)}) == (5, 4)
    with pytest.raises(ShapeError, match=r"\(2,\)"):
        _infer(node, {y: (5, 4), labels: (5, 4), g: (2,)})


# (builder, shapes, the texts the message must hold: the node and each offending shape)
MISMATCHES = [
    (lambda a, b: ad.matmul_op(a, b), (2, 784), (785, 256),
     ["MatMul(a, b)", "(2, 784)", "(785, 256)"]),
    (lambda a, b: ad.matmul_op(a, b, True, True), (3, 2), (3, 4),
     ["MatMul(a.T, b.T)", "(3, 2)", "(3, 4)"]),
    (lambda a, b: ad.matmul_op(a, b), (2, 3, 1), (3, 4), ["MatMul(a, b)", "(2, 3, 1)"]),
    (ad.add_op, (2, 3), (3, 2), ["(a+b)", "(2, 3)", "(3, 2)"]),
    (ad.mul_op, (4, 3), (4,), ["(a*b)", "(4, 3)", "(4,)"]),
    (ad.relu_gradient_op, (2, 3), (2, 4), ["ReluGradient(a, b)", "(2, 3)", "(2, 4)"]),
    (ad.softmaxcrossentropy_op, (5, 4), (5, 3), ["SoftmaxXEntropy(a, b)", "(5, 4)", "(5, 3)"]),
    (ad.conv2d_op, (2, 3, 6, 6), (4, 2, 3, 3), ["Conv2d(a, b)", "(2, 3, 6, 6)", "(4, 2, 3, 3)"]),
    (ad.conv2d_op, (2, 3, 2, 2), (4, 3, 3, 3), ["Conv2d(a, b)", "(2, 3, 2, 2)", "(4, 3, 3, 3)"]),
    (ad.broadcastto_op, (2, 3), (3, 3), ["BroadcastTo(a, b)", "(2, 3)", "(3, 3)"]),
    (ad.broadcastto_op, (2, 3), (3,), ["BroadcastTo(a, b)", "(2, 3)", "(3,)"]),
    (ad.reducesumto_op, (3,), (4, 3), ["ReduceSumTo(a, b)", "(3,)", "(4, 3)"]),
    (lambda a, b: a - b, (2, 3), (3, 2), ["(a-b)", "(2, 3)", "(3, 2)"]),
    (lambda a, b: a / b, (4, 3), (4,), ["(a/b)", "(4, 3)", "(4,)"]),
    (lambda a, b: a @ b, (2, 784), (785, 256), ["MatMul(a, b)", "(2, 784)", "(785, 256)"]),
]


@pytest.mark.parametrize("build, shape_a, shape_b, texts", MISMATCHES)
def test_mismatch_names_node_and_shapes(build, shape_a, shape_b, texts):
    a, b = _vars("a", "b")
    with pytest.raises(ShapeError) as caught:
        _infer(build(a, b), {a: shape_a, b: shape_b})
    for text in texts:
        assert text in str(caught.value)


@pytest.mark.parametrize("build, shape", [(ad.reducesumaxiszero_op, (5,)),
                                          (lambda a: ad.softmax_op(a, 3), (2, 3, 4)),
                                          (lambda a: ad.softmax_op(a, -2), (6,))])
def test_unary_mismatch_names_node_and_shape(build, shape):
    (a,) = _vars("a")
    node = build(a)
    with pytest.raises(ShapeError) as caught:
        _infer(node, {a: shape})
    assert node.name in str(caught.value) and str(shape) in str(caught.value)


def test_mismatch_deep_in_graph_names_the_failing_node():
    x, w1, w2 = _vars("X", "W1", "W2")
    h = ad.relu_op(ad.matmul_op(x, w1))
    out = ad.matmul_op(h, w2)
    with pytest.raises(ShapeError) as caught:
        _infer(out, {x: (8, 784), w1: (784, 256), w2: (255, 10)})
    assert "MatMul(Relu(MatMul(X, W1)), W2)" in str(caught.value)
    assert "(8, 256)" in str(caught.value) and "(255, 10)" in str(caught.value)


def test_missing_placeholder_shape_is_a_feed_error():
    a, b = _vars("a", "b")
    with pytest.raises(FeedError, match=r"\bb\b"):
        _infer(a + b, {a: (2,)})


def test_executor_reports_shape_error_before_compiling_or_running(monkeypatch):
    # Every kernel is built through registry.build_kernel: a call there means shape inference
    # came too late.
    built = []
    real = registry.build_kernel
    monkeypatch.setattr(registry, "build_kernel", lambda *a, **k: built.append(a) or real(*a, **k))
    x, w1, labels = _vars("X", "W1", "y_")
    loss = ad.softmaxcrossentropy_op(ad.matmul_op(x, w1), labels)
    executor = ad.Executor([loss, *ad.gradients(loss, [w1])])
    with pytest.raises(ShapeError) as caught:
        executor.run({x: np.zeros((2, 784)), w1: np.zeros((785, 10)),
                      labels: np.zeros((2, 10))})
    message = str(caught.value)
    assert "MatMul(X, W1)" in message and "(2, 784)" in message and "(785, 10)" in message
    assert built == []


@pytest.mark.parametrize("shape", [(0, 3), (2, 0), ()])
def test_empty_feed_shape_names_the_feed(shape):
    x, w = _vars("images", "w")
    with pytest.raises(ShapeError) as caught:
        _infer(ad.matmul_op(x, w), {x: shape, w: (3, 2)})
    assert "images" in str(caught.value) and str(shape) in str(caught.value)


# (axes, input shape, the texts the message must hold besides the node's name)
BAD_AXES = [
    (2, (3, 4), ["axis 2 is out of range", "a (3, 4)"]),
    (-3, (3, 4), ["axis -3 is out of range", "a (3, 4)"]),
    ((0, 1, 2), (3, 4), ["axis 2 is out of range"]),
    ((1, -1), (3, 4), ["axes (1, -1) name axis 1 more than once", "a (3, 4)"]),
    ((0, -3), (3, 4, 5), ["axes (0, -3) name axis 0 more than once"]),
]


@pytest.mark.parametrize("reduce", [ad.sum_op, ad.mean_op], ids=["sum", "mean"])
@pytest.mark.parametrize("axes, shape, texts", BAD_AXES)
def test_bad_axes_name_node_argument_and_shape(reduce, axes, shape, texts):
    # Found when the input's shape is known: -1 repeats 1 only for a 2-d input.
    (a,) = _vars("a")
    node = reduce(a, axes=axes)
    with pytest.raises(ShapeError) as caught:
        _infer(node, {a: shape})
    message = str(caught.value)
    assert message.startswith(node.name) and "axes" in message
    for text in texts:
        assert text in message
