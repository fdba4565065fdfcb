"""The depthwise convolution over long rows (``kernels.conv.depthwise._depthwise_long_rows``:
MobileNet's 112 and 56 pixel planes, each output a sum written out, a few padded rows at a
time): forward values through the executor in float32 against PyTorch's, at strides 1 and
2, dilated, padded unevenly, with a 5 x 5 filter, with a fused bias and ReLU, after checking
that each case takes that path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from dlsys import autodiff as ad  # noqa: E402
from dlsys.kernels.conv import depthwise  # noqa: E402
from dlsys.ops.conv import conv2d_op  # noqa: E402

# name: (images, filter size, stride, padding, padding_end, dilation); each output row reads
# more than two vectors of the image with AVX-512's 16 lanes and AVX2's 8 alike.
CASES = {
    "stride1": ((2, 3, 8, 40), (3, 3), 1, 1, None, 1),         # rows padded 4 at a time
    "stride2_odd": ((1, 2, 11, 39), (3, 3), 2, 1, None, 1),    # 3 at a time
    "prime_height": ((1, 2, 5, 40), (3, 3), 1, 1, None, 1),    # 1 at a time
    "wide_filter_uneven": ((1, 2, 8, 37), (5, 5), (1, 2), (2, 2), (1, 0), 1),
    "dilated": ((1, 2, 7, 36), (3, 3), 1, 2, None, 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_long_rows_match_pytorch(case):
    shape_x, kernel, stride, padding, padding_end, dilation = CASES[case]
    channels = shape_x[1]
    rng = np.random.default_rng(1)
    feeds_np = (rng.normal(size=shape_x), rng.normal(size=(channels, 1, *kernel)),
                rng.normal(size=(channels, 1, 1)))
    x, w, b = ad.Variable("x"), ad.Variable("w"), ad.Variable("b")
    conv = conv2d_op(x, w, stride, padding, dilation, groups=channels, padding_end=padding_end)
    executor = ad.Executor([ad.relu_op(conv + b)], dtype="float32")
    (got,) = executor.run(dict(zip((x, w, b), feeds_np)), convert_to_numpy_ret_vals=True)
    pairs = [p if isinstance(p, tuple) else (p, p) for p in (stride, padding, dilation)]
    begin, end = pairs[1], (pairs[1] if padding_end is None else padding_end)
    images, filters, bias = (torch.tensor(a) for a in feeds_np)
    padded = F.pad(images, (begin[1], end[1], begin[0], end[0]))
    want = F.relu(F.conv2d(padded, filters, stride=pairs[0], dilation=pairs[2],
                           groups=channels) + bias)
    assert depthwise._long_rows(tuple(want.shape), pairs[0], "float32")
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_short_rows_keep_register_tiles():
    # 28 x 28 at stride 1: 28 columns, less than two vectors, stay in register tiles.
    assert not depthwise._long_rows((1, 32, 28, 28), (1, 1), "float32")
