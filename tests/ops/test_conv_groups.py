"""Convolutions and pools with ONNX's options (groups, depthwise, dilation, a padding of each
side, the transposed convolution, ceil mode, averages without the padding): forward values and
gradients against PyTorch (float64), the adjoints' own gradients and the dilated average pool
(which PyTorch lacks) against finite differences,
a fused depthwise epilogue in float32, and bad arguments refused where the node is built."""

from __future__ import annotations

import numpy as np
import pytest
from test_autodiff import check_gradients

torch = pytest.importorskip("torch")
F = torch.nn.functional

from dlsys import autodiff as ad  # noqa: E402
from dlsys.errors import ArgumentTypeError, ShapeError  # noqa: E402
from dlsys.ops.conv import conv2d_grad_input_op, conv2d_grad_weight_op, conv2d_op  # noqa: E402
from dlsys.ops.conv_transpose import conv_transpose2d_op  # noqa: E402
from dlsys.ops.pool import avgpool2d_op, maxpool2d_op  # noqa: E402


def _pad(t, begin, end, value=0.0):
    """PyTorch's input padded by ``begin`` and ``end`` (h, w) pairs."""
    return F.pad(t, (begin[1], end[1], begin[0], end[0]), value=value)


# name: (dlsys builder, PyTorch function, input shapes)
CASES = {
    "grouped": (lambda x, w: conv2d_op(x, w, 1, 1, groups=2),
                lambda x, w: F.conv2d(x, w, padding=1, groups=2), [(2, 4, 6, 5), (6, 2, 3, 3)]),
    "depthwise_s2": (lambda x, w: conv2d_op(x, w, 2, 1, groups=4),
                     lambda x, w: F.conv2d(x, w, stride=2, padding=1, groups=4),
                     [(2, 4, 7, 6), (4, 1, 3, 3)]),
    "depthwise_dilated_asymmetric": (
        lambda x, w: conv2d_op(x, w, 1, (0, 1), 2, 3, padding_end=(2, 0)),
        lambda x, w: F.conv2d(_pad(x, (0, 1), (2, 0)), w, dilation=2, groups=3),
        [(1, 3, 8, 7), (3, 1, 3, 2)]),
    "depthwise_multiplier": (lambda x, w: conv2d_op(x, w, 1, 1, groups=2),
                             lambda x, w: F.conv2d(x, w, padding=1, groups=2),
                             [(2, 2, 5, 5), (4, 1, 3, 3)]),
    "dilated": (lambda x, w: conv2d_op(x, w, (2, 1), 2, (2, 3)),
                lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=2, dilation=(2, 3)),
                [(2, 3, 9, 8), (4, 3, 3, 2)]),
    "asymmetric_pads": (lambda x, w: conv2d_op(x, w, 2, (1, 0), padding_end=(0, 2)),
                        lambda x, w: F.conv2d(_pad(x, (1, 0), (0, 2)), w, stride=2),
                        [(2, 3, 7, 6), (4, 3, 3, 3)]),
    "transpose": (lambda x, w: conv_transpose2d_op(x, w, 2, 1, 1),
                  lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
                  [(2, 4, 4, 3), (4, 3, 3, 3)]),
    "transpose_grouped_dilated": (
        lambda x, w: conv_transpose2d_op(x, w, (1, 2), (0, 1), (0, 1), 2, 2),
        lambda x, w: F.conv_transpose2d(x, w, stride=(1, 2), padding=(0, 1),
                                        output_padding=(0, 1), dilation=2, groups=2),
        [(1, 4, 3, 4), (4, 1, 2, 3)]),
    "maxpool_ceil_dilated": (lambda x: maxpool2d_op(x, 2, 2, 0, dilation=(2, 1), ceil_mode=True),
                             lambda x: F.max_pool2d(x, 2, 2, dilation=(2, 1), ceil_mode=True),
                             [(2, 3, 9, 8)]),
    "maxpool_asymmetric": (lambda x: maxpool2d_op(x, 3, 2, (1, 0), padding_end=(0, 1)),
                           lambda x: F.max_pool2d(_pad(x, (1, 0), (0, 1), -np.inf), 3, 2),
                           [(1, 2, 7, 6)]),
    "avgpool_ceil": (lambda x: avgpool2d_op(x, 3, 2, 1, ceil_mode=True),
                     lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), [(2, 3, 8, 7)]),
    "avgpool_exclude_pad_ceil": (
        lambda x: avgpool2d_op(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        [(2, 3, 8, 7)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradients_match_pytorch(case):
    build, reference, shapes = CASES[case]
    rng = np.random.default_rng(len(case))
    values = [rng.normal(size=shape) for shape in shapes]
    inputs = [ad.Variable(f"x{i}") for i in range(len(shapes))]
    out = build(*inputs)
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    want = reference(*tensors)
    upstream = rng.normal(size=tuple(want.shape))
    (want * torch.tensor(upstream)).sum().backward()
    weight = ad.Variable("upstream")
    grads = ad.gradients(out * weight, inputs)
    feeds = {**dict(zip(inputs, values)), weight: upstream}
    got, *got_grads = ad.Executor([out, *grads], dtype="float64").run(
        feeds, convert_to_numpy_ret_vals=True)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-10)
    for name, mine, theirs in zip(range(len(shapes)), got_grads, tensors):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-10, atol=1e-10,
                                   err_msg=f"gradient of input {name}")


# The adjoints of grouped, dilated convolutions are bilinear: their own gradients are the
# convolution and the other adjoint again, with the same options.
OPTIONS = {"stride": 2, "padding": 1, "dilation": (1, 2), "groups": 2}


@pytest.mark.parametrize("build, shapes, constants", [
    (lambda g, w, x: conv2d_grad_input_op(g, w, x, **OPTIONS),
     [(1, 4, 3, 2), (4, 1, 3, 2), (1, 2, 5, 4)], (2,)),
    (lambda x, g, w: conv2d_grad_weight_op(x, g, w, **OPTIONS),
     [(1, 2, 5, 4), (1, 4, 3, 2), (4, 1, 3, 2)], (2,)),
    # PyTorch has no dilated average pool: its gradient, and its adjoint's, numerically.
    (lambda x: avgpool2d_op(x, (2, 3), 2, (1, 0), dilation=(2, 1), ceil_mode=True,
                            count_include_pad=False), [(2, 2, 8, 7)], ()),
], ids=["grad_input", "grad_weight", "avgpool_dilated"])
def test_adjoint_gradients_match_finite_differences(build, shapes, constants):
    check_gradients(build, shapes, constants)


def test_depthwise_with_bias_and_relu_fused_in_float32():
    rng = np.random.default_rng(3)
    x, w, b = ad.Variable("x"), ad.Variable("w"), ad.Variable("b")
    out = ad.relu_op(conv2d_op(x, w, 1, 1, groups=8) + b)
    feeds = {x: rng.normal(size=(2, 8, 9, 20)), w: rng.normal(size=(8, 1, 3, 3)),
             b: rng.normal(size=(8, 1, 1))}
    (got,) = ad.Executor([out], dtype="float32").run(feeds, convert_to_numpy_ret_vals=True)
    want = F.relu(F.conv2d(*(torch.tensor(feeds[n]) for n in (x, w)), padding=1, groups=8)
                  + torch.tensor(feeds[b]))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, shapes, error, text", [
    (lambda x, w: conv2d_op(x, w, groups=3), [(1, 4, 5, 5), (6, 2, 3, 3)], ShapeError,
     "3 groups"),
    (lambda x, w: conv2d_op(x, w, groups=2), [(1, 4, 5, 5), (3, 2, 3, 3)], ShapeError,
     "do not split into 2 groups"),
    (lambda x, w: conv2d_op(x, w, dilation=3), [(1, 2, 5, 5), (3, 2, 3, 3)], ShapeError,
     "dilated by (3, 3) is larger"),
    (lambda x, w: conv_transpose2d_op(x, w), [(1, 3, 5, 5), (2, 3, 3, 3)], ShapeError,
     "3 channels but the filters take 2"),
])
def test_bad_shapes_are_refused_naming_the_node(call, shapes, error, text):
    x, w = ad.Variable("x"), ad.Variable("w")
    with pytest.raises(error) as caught:
        ad.Executor([call(x, w)]).run({x: np.ones(shapes[0]), w: np.ones(shapes[1])})
    assert text in str(caught.value) and "(x, w" in str(caught.value)


@pytest.mark.parametrize("call, error, text", [
    (lambda x, w: conv2d_op(x, w, groups=0), ShapeError, "groups must be positive"),
    (lambda x, w: conv2d_op(x, w, groups=1.5), ArgumentTypeError, "groups must be an int"),
    (lambda x, w: conv2d_op(x, w, dilation=0), ShapeError, "dilation must be positive"),
    (lambda x, w: conv2d_op(x, w, padding_end=-1), ShapeError, "padding_end"),
    (lambda x, w: conv_transpose2d_op(x, w, 2, output_padding=2), ShapeError,
     "below the stride"),
    (lambda x, w: maxpool2d_op(x, 2, dilation=0), ShapeError, "dilation must be positive"),
])
def test_bad_options_are_refused_where_the_node_is_built(call, error, text):
    x, w = ad.Variable("images"), ad.Variable("w")
    with pytest.raises(error) as caught:
        call(x, w)
    assert text in str(caught.value)
