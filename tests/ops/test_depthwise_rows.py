"""The depthwise convolution (``kernels.conv.depthwise``: each output a sum written out over
padded image rows copied a few output rows at a time): forward values through the executor
in float32 against PyTorch's, with a fused bias and ReLU, for short rows (vectorised by TVM;
the whole plane padded at once at stride 1, one output row at a time above) and long rows
(vectorised by LLVM, rows padded up to 4 output rows at a time), strided, dilated, padded
unevenly, with wide filters, after checking which of those each case takes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from dlsys import autodiff as ad  # noqa: E402
from dlsys.kernels.conv import depthwise  # noqa: E402
from dlsys.ops.conv import conv2d_op  # noqa: E402

# name: (images, filter size, stride, padding, padding_end, dilation, short rows, output rows
# per padded copy, one flat row per plane); each takes that path with AVX-512's 16 lanes and
# AVX2's 8 alike.
CASES = {
    "flat_small_plane": ((2, 3, 4, 4), (3, 3), 1, 1, None, 1, True, 4, True),
    "flat_dilated_wide_filter": ((2, 3, 6, 7), (3, 5), 1, (2, 4), None, 2, True, 6, True),
    "flat_uneven": ((1, 2, 5, 6), (2, 3), 1, 1, (0, 1), 1, True, 5, True),
    "short_stride2": ((1, 4, 14, 13), (3, 3), 2, 1, None, 1, True, 1, False),
    "short_stride2_wide_filter": ((1, 2, 11, 12), (3, 5), (2, 3), (1, 2), (0, 1), 1, True, 1,
                                  False),
    "short_dilated_uneven": ((1, 3, 5, 4), (3, 2), 1, (2, 0), (1, 1), 2, True, 4, False),
    "long_stride1": ((2, 3, 8, 40), (3, 3), 1, 1, None, 1, False, 4, False),
    "long_stride2_odd": ((1, 2, 11, 39), (3, 3), 2, 1, None, 1, False, 3, False),
    "long_prime_height": ((1, 2, 5, 40), (3, 3), 1, 1, None, 1, False, 1, False),
    "long_wide_filter_uneven": ((1, 2, 8, 37), (5, 5), (1, 2), (2, 2), (1, 0), 1, False, 1,
                                False),
    "long_dilated": ((1, 2, 7, 36), (3, 3), 1, 2, None, 2, False, 1, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_depthwise_rows_match_pytorch(case):
    shape_x, kernel, stride, padding, padding_end, dilation, short, together, flat = \
        CASES[case]
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
    shape_y = tuple(want.shape)
    assert depthwise.short_rows(shape_y[3], pairs[0][1], "float32") == short
    assert depthwise.rows_per_pad(shape_y, pairs[0], "float32") == together
    assert depthwise.flat_plane(shape_x, shape_y, pairs[0], "float32") == flat
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
