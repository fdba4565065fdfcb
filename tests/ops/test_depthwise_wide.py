"""The depthwise convolution's wide grid (``kernels.conv.depthwise._depthwise_wide``: small
planes, and strides above 1 where a row is at most one vector): forward values through the
executor in float32 against PyTorch's, strided, dilated, padded unevenly, with a fused bias
and ReLU, after checking that each case takes that grid and not whole vectors per row."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from dlsys import autodiff as ad  # noqa: E402
from dlsys.kernels.conv import depthwise  # noqa: E402
from dlsys.ops.conv import conv2d_op  # noqa: E402

# name: (images, filter size, stride, padding, padding_end, dilation); each takes the wide
# grid with AVX-512's 16 lanes and AVX2's 8 alike.
CASES = {
    "small_plane": ((2, 3, 4, 4), (3, 3), 1, 1, None, 1),
    "stride2": ((1, 4, 14, 13), (3, 3), 2, 1, None, 1),
    "stride2_wide_filter": ((1, 2, 11, 12), (3, 5), (2, 3), (1, 2), (0, 1), 1),
    "dilated_uneven": ((1, 3, 5, 4), (3, 2), 1, (2, 0), (1, 1), 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wide_grid_matches_pytorch(case):
    shape_x, kernel, stride, padding, padding_end, dilation = CASES[case]
    channels = shape_x[1]
    rng = np.random.default_rng(0)
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
    shape_f = (channels, 1, *kernel)
    assert depthwise._wide_grid(shape_f, tuple(want.shape), pairs[0], pairs[2],
                                "float32") is not None
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_wide_planes_keep_whole_vectors_per_row():
    # 112 x 112 at stride 1: 114 columns a row would take more vectors than 7 per row.
    assert depthwise._wide_grid((32, 1, 3, 3), (1, 32, 112, 112), (1, 1), (1, 1),
                                "float32") is None
