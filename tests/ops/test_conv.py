"""Convolution and pooling operators: gradients against finite differences (float64, odd
and non-square sizes, stride 2 with padding 1 and stride 1 without), the forward values
through the executor against numpy, the per-channel bias, and every bad input refused by
shape inference before any kernel runs."""

from __future__ import annotations

import numpy as np
import pytest
from graph_gen import numpy_eval
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys.errors import ArgumentTypeError, ShapeError

X, W = (2, 3, 7, 6), (4, 3, 3, 2)        # images and filters, odd and non-square
G21, G10 = (2, 4, 4, 4), (2, 4, 5, 5)    # the convolution's output: stride 2 pad 1; 1, 0

GRADIENT_CASES = {
    "conv2d": (ad.conv2d_op, [X, W], ()),
    "conv2d_s2_p1": (lambda x, w: ad.conv2d_op(x, w, 2, 1), [X, W], ()),
    "conv2d_pairs": (lambda x, w: ad.conv2d_op(x, w, (2, 1), (0, 1)), [(1, 2, 5, 6),
                                                                       (3, 2, 2, 3)], ()),
    "conv2d_bias": (lambda x, w, b: ad.conv2d_op(x, w, 2, 1) + b, [X, W, (4, 1, 1)], ()),
    "conv2d_chain": (lambda x, w, v: ad.conv2d_op(ad.relu_op(ad.conv2d_op(x, w, 1, 1)), v, 2),
                     [X, W, (2, 4, 2, 3)], ()),
    # The adjoints themselves (bilinear: their gradients are convolutions again).
    "conv2d_grad_input": (lambda g, w, x: ad.conv2d_grad_input_op(g, w, x), [G10, W, X], (2,)),
    "conv2d_grad_input_s2_p1": (lambda g, w, x: ad.conv2d_grad_input_op(g, w, x, 2, 1),
                                [G21, W, X], (2,)),
    "conv2d_grad_weight": (lambda x, g, w: ad.conv2d_grad_weight_op(x, g, w), [X, G10, W], (2,)),
    "conv2d_grad_weight_s2_p1": (lambda x, g, w: ad.conv2d_grad_weight_op(x, g, w, 2, 1),
                                 [X, G21, W], (2,)),
    "maxpool": (lambda x: ad.maxpool2d_op(x, 2), [(2, 3, 7, 5)], ()),
    "maxpool_k3_s2_p1": (lambda x: ad.maxpool2d_op(x, 3, 2, 1), [(2, 3, 7, 5)], ()),
    "maxpool_s1": (lambda x: ad.maxpool2d_op(x, (2, 3), 1), [(1, 2, 5, 6)], ()),
    "avgpool": (lambda x: ad.avgpool2d_op(x, 2), [(2, 3, 7, 5)], ()),
    "avgpool_k3_s2_p1": (lambda x: ad.avgpool2d_op(x, 3, 2, 1), [(2, 3, 7, 5)], ()),
    "avgpool_s1": (lambda x: ad.avgpool2d_op(x, (2, 3), 1), [(1, 2, 5, 6)], ()),
    "avgpool_grad_k3_s2_p1": (lambda g, x: ad.avgpool2d_grad_op(g, x, 3, 2, 1),
                              [(2, 3, 4, 3), (2, 3, 7, 5)], (1,)),
    "avgpool_grad": (lambda g, x: ad.avgpool2d_grad_op(g, x, 2, 2, 0),
                     [(2, 3, 3, 2), (2, 3, 7, 5)], (1,)),
    "global_avgpool": (ad.global_avgpool_op, [(2, 3, 5, 7)], ()),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradient_matches_finite_differences(case):
    build, shapes, constants = GRADIENT_CASES[case]
    check_gradients(build, shapes, constants)


FORWARD_CASES = [
    (lambda x, w: ad.conv2d_op(x, w, 2, 1), [X, W], (2, 4, 4, 4)),
    (lambda x, w: ad.conv2d_op(x, w), [X, W], (2, 4, 5, 5)),
    (lambda x, w: ad.conv2d_op(x, w, (1, 2), (2, 0)), [X, W], (2, 4, 9, 3)),
    (lambda x: ad.maxpool2d_op(x, 2), [(2, 3, 7, 5)], (2, 3, 3, 2)),
    (lambda x: ad.maxpool2d_op(x, 3, 2, 1), [(2, 3, 7, 5)], (2, 3, 4, 3)),
    (lambda x: ad.avgpool2d_op(x, (3, 2), (2, 1), (1, 0)), [(2, 3, 7, 5)], (2, 3, 4, 4)),
    (ad.global_avgpool_op, [(2, 3, 5, 7)], (2, 3, 1, 1)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("index", range(len(FORWARD_CASES)))
def test_forward_matches_numpy(index, dtype):
    build, shapes, expected = FORWARD_CASES[index]
    rng = np.random.default_rng(index)
    inputs = [ad.Variable(f"x{i}") for i in range(len(shapes))]
    out = build(*inputs)
    feeds = {node: rng.normal(size=shape) for node, shape in zip(inputs, shapes)}
    (got,) = ad.Executor([out], dtype=dtype).run(feeds, convert_to_numpy_ret_vals=True)
    assert got.shape == expected
    tolerance = {"float32": 1e-5, "float64": 1e-12}[dtype]
    want = numpy_eval([out], {k: v.astype(dtype) for k, v in feeds.items()})[0]
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def test_max_pool_padding_never_wins_and_ties_go_to_the_first_maximum():
    # All-negative images: a zero-padded maximum would be 0. Equal values: PyTorch gives the
    # gradient to the first maximum of the window only.
    x = ad.Variable("x")
    pooled = ad.maxpool2d_op(x, 3, 2, 1)
    (grad,) = ad.gradients(ad.sum_op(pooled), [x])
    images = -np.ones((1, 1, 4, 4))
    value, dx = ad.Executor([pooled, grad], dtype="float64").run(
        {x: images}, convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(value, -np.ones((1, 1, 2, 2)))
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, [0, 0, 1, 1], [0, 1, 0, 1]] = 1  # each window's first element of the image
    np.testing.assert_array_equal(dx, want)


def test_per_channel_bias_broadcasts_through_add():
    rng = np.random.default_rng(5)
    x, w, b = ad.Variable("x"), ad.Variable("w"), ad.Variable("b")
    out = ad.conv2d_op(x, w, 1, 1) + b
    feeds = {x: rng.normal(size=X), w: rng.normal(size=W), b: rng.normal(size=(4, 1, 1))}
    (got,) = ad.Executor([out], dtype="float64").run(feeds, convert_to_numpy_ret_vals=True)
    conv = numpy_eval([ad.conv2d_op(x, w, 1, 1)], feeds)[0]
    np.testing.assert_allclose(got, conv + feeds[b].reshape(1, 4, 1, 1), rtol=1e-12)


# (builder, feed shapes, texts the message must hold: the node and the offending shapes)
BAD_SHAPES = [
    (lambda x, w: ad.conv2d_op(x, w), [(2, 3, 7, 6), (4, 2, 3, 3)],
     ["Conv2d(x, w)", "3 channels", "(2, 3, 7, 6)", "(4, 2, 3, 3)"]),
    (lambda x, w: ad.conv2d_op(x, w, 1, 1), [(2, 3, 3, 3), (4, 3, 6, 2)],
     ["Conv2d(x, w, padding=(1, 1))", "larger", "(4, 3, 6, 2)"]),
    (lambda x, w: ad.conv2d_op(x, w), [(3, 7, 6), (4, 3, 3, 3)], ["Conv2d(x, w)", "4-d"]),
    (lambda x, w: ad.maxpool2d_op(x, 3) + w, [(2, 3, 2, 7), (1,)],
     ["MaxPool2d(x, kernel=(3, 3))", "larger", "(2, 3, 2, 7)"]),
    (lambda x, w: ad.avgpool2d_op(x, 2, padding=2) + w, [(2, 3, 8, 8), (1,)],
     ["AvgPool2d(x, kernel=(2, 2), padding=(2, 2))", "half"]),
    (lambda x, w: ad.avgpool2d_op(x, 2) + w, [(3, 8, 8), (1,)], ["AvgPool2d", "4-d"]),
    (lambda x, w: ad.global_avgpool_op(x) + w, [(3, 8), (1,)], ["GlobalAvgPool(x)", "4-d"]),
]


@pytest.mark.parametrize("build, shapes, texts", BAD_SHAPES)
def test_bad_shapes_are_refused_before_any_kernel(build, shapes, texts):
    x, w = ad.Variable("x"), ad.Variable("w")
    executor = ad.Executor([build(x, w)])
    with pytest.raises(ShapeError) as caught:
        executor.run({x: np.ones(shapes[0]), w: np.ones(shapes[1])})
    for text in texts:
        assert text in str(caught.value), (text, str(caught.value))


def test_a_bias_of_the_wrong_channel_count_is_a_shape_error():
    x, w, b = ad.Variable("x"), ad.Variable("w"), ad.Variable("b")
    out = ad.conv2d_op(x, w) + b
    with pytest.raises(ShapeError, match=r"\(2, 4, 5, 5\).*\(3, 1, 1\)"):
        ad.Executor([out]).run({x: np.ones(X), w: np.ones(W), b: np.ones((3, 1, 1))})


@pytest.mark.parametrize("call, error, text", [
    (lambda x, w: ad.conv2d_op(x, w, stride=0), ShapeError, "stride must be positive"),
    (lambda x, w: ad.conv2d_op(x, w, stride=(1, -2)), ShapeError, "stride must be positive"),
    (lambda x, w: ad.conv2d_op(x, w, padding=-1), ShapeError, "padding must be non-negative"),
    (lambda x, w: ad.conv2d_op(x, w, stride=1.5), ArgumentTypeError, "stride"),
    (lambda x, w: ad.conv2d_op(x, w, padding=(1, 1, 1)), ArgumentTypeError, "padding"),
    (lambda x, w: ad.conv2d_op(x, "w"), ArgumentTypeError, "w"),
    (lambda x, w: ad.maxpool2d_op(x, 0), ShapeError, "kernel_size must be positive"),
    (lambda x, w: ad.maxpool2d_op(x, 2, stride=-1), ShapeError, "stride must be positive"),
    (lambda x, w: ad.avgpool2d_op(x, 2, padding=-1), ShapeError, "padding"),
    (lambda x, w: ad.avgpool2d_op(x, True), ArgumentTypeError, "kernel_size"),
])
def test_bad_window_arguments_are_refused_where_the_node_is_built(call, error, text):
    x, w = ad.Variable("images"), ad.Variable("w")
    with pytest.raises(error) as caught:
        call(x, w)
    assert text in str(caught.value)
    assert error is ArgumentTypeError or "images" in str(caught.value)
