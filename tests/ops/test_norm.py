"""Batch normalisation's operators: the normalisation's gradient and the affine's, against
finite differences in float64, and its kernels against their numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from graph_gen import numpy_eval
from test_autodiff import check_gradients

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.ops.norm import batchnorm2d_op, batchnorm_normalize_op


@pytest.mark.parametrize("shape", [(3, 2, 3, 5), (2, 3, 1, 4), (1, 2, 2, 3)])
def test_normalisation_gradient_matches_finite_differences(shape):
    check_gradients(lambda x: batchnorm_normalize_op(x, eps=1e-5), [shape])


def test_affine_batchnorm_gradients_match_finite_differences():
    running = [nn.Parameter(np.zeros(3, np.float64), "m"),
               nn.Parameter(np.ones(3, np.float64), "v")]
    check_gradients(lambda x, g, b: batchnorm2d_op(x, g, b, *running),
                    [(2, 3, 3, 2), (3,), (3,)])


def test_kernels_match_their_numpy_references():
    x = ad.Variable("x")
    mean = nn.Parameter(np.random.default_rng(0).normal(size=4), "mean")
    var = nn.Parameter(np.random.default_rng(1).uniform(0.5, 2, size=4), "var")
    gamma, beta = (nn.Parameter(np.random.default_rng(s).normal(size=4), n)
                   for s, n in ((2, "gamma"), (3, "beta")))
    inference = batchnorm2d_op(x, gamma, beta, mean, var, training=False)
    normalized = batchnorm_normalize_op(x, eps=1e-5)
    values = np.random.default_rng(4).normal(size=(3, 4, 5, 3))
    for dtype, tol in (("float32", 1e-5), ("float64", 1e-12)):
        got = ad.Executor([inference, normalized], dtype=dtype).run(
            {x: values}, convert_to_numpy_ret_vals=True)
        feeds = {x: values, gamma: gamma.numpy(), beta: beta.numpy(), mean: mean.numpy(),
                 var: var.numpy()}
        for g, w in zip(got, numpy_eval([inference, normalized], feeds)):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
