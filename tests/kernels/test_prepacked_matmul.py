"""A constant B packed once (``pack_panels``) and the product reading it (``matmul_prepacked``),
against numpy: every transpose, padded rows and columns, fused epilogues, row-vector tiles."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from dlsys.kernels.common.epilogue import Epilogue
from dlsys.kernels.matmul import search as mm
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.linalg import pack_panels_op
from dlsys.ops.placeholder import Variable

TOL = {"float32": {"rtol": 1e-4, "atol": 1e-4}, "float64": {"rtol": 1e-10, "atol": 1e-10}}
BIAS_RELU = (Epilogue("add", "bias_add", 0, "columns"), Epilogue("relu", "relu", 0, None))


@pytest.fixture(autouse=True)
def _no_search(monkeypatch):
    monkeypatch.setenv("DLSYS_TUNE", "0")


def _tensor(array):
    return tvm.runtime.tensor(np.ascontiguousarray(array))


def _packed(b: np.ndarray, trans_b: bool, panel: int) -> np.ndarray:
    """B packed by its kernel, checked against the operator's numpy reference."""
    kernel = KernelSpec("pack_panels", (b.shape, trans_b, panel)).build("llvm", str(b.dtype))
    node = pack_panels_op(Variable("B"), trans_b, panel)
    expected = node.op.reference(node, b)
    assert expected.shape == node.op.infer_shape(node, [b.shape])
    out = tvm.runtime.empty(expected.shape, str(b.dtype))
    kernel.func(_tensor(b), out)
    np.testing.assert_array_equal(out.numpy(), expected)
    return expected


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("k,n,panel", [(5, 16, 16), (7, 29, 16), (3, 10, 10), (4, 1, 8)])
def test_panels_hold_the_columns_and_zeros_past_n(k, n, panel, trans_b):
    rng = np.random.default_rng(k * n)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype("float32")
    packed = _packed(b, trans_b, panel)
    columns = b.T if trans_b else b
    for j in range(n):
        np.testing.assert_array_equal(packed[j // panel, :, j % panel], columns[:, j])
    panels_width = packed.shape[0] * panel
    flat = packed.transpose(1, 0, 2).reshape(k, panels_width)
    assert not flat[:, n:].any()


def _run_prepacked(m, n, k, trans_a, trans_b, tiles, epilogue=(), dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    packed = _packed(b, trans_b, tiles[1])
    spec = KernelSpec("matmul_prepacked", (a.shape, trans_a, b.shape, trans_b, tiles, epilogue))
    kernel = spec.build("llvm", dtype)
    out = tvm.runtime.empty((m, n), dtype)
    operands = [bias] if epilogue else []
    kernel.func(_tensor(a), _tensor(packed), *map(_tensor, operands), out)
    product = (a.T if trans_a else a) @ (b.T if trans_b else b)
    return out.numpy(), (np.maximum(product + bias, 0) if epilogue else product)


# Configs as the tuned schedule makes them: column tiles that pad N, row tiles that pad M
# (A packed), A read unpacked, rows vectorised for a narrow output, B in narrower slabs.
CONFIGS = [mm.MatmulConfig(6, 16, 32), mm.MatmulConfig(4, 8, 8, pack_a=False),
           mm.MatmulConfig(5, 16, 16), mm.MatmulConfig(8, 5, 30, vec_m=True),
           mm.MatmulConfig(1, 8, 16)]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
@pytest.mark.parametrize("fused", [False, True])
def test_prepacked_product_matches_numpy(config, trans_a, trans_b, fused):
    m, n, k = (40, 30, 23) if config.pack_a else (36, 32, 23)  # unpacked A: whole row tiles
    problem = mm.MatmulProblem(m, n, k, trans_a, trans_b, "float32")
    assert config.fits(problem)
    tiles = (config.mr, config.nr, config.nc, config.pack_a, config.vec_m)
    out, expected = _run_prepacked(m, n, k, trans_a, trans_b, tiles,
                                   BIAS_RELU if fused else ())
    np.testing.assert_allclose(out, expected, **TOL["float32"])


@pytest.mark.parametrize("m,n,k,trans_b", [(256, 256, 784, True), (1, 256, 784, False),
                                           (7, 100, 64, False), (256, 10, 100, True)])
def test_chosen_tiles_give_the_product(m, n, k, trans_b):
    tiles = mm.prepacked_tiles((m, k), False, (n, k) if trans_b else (k, n), trans_b, "float32")
    out, expected = _run_prepacked(m, n, k, False, trans_b, tiles, BIAS_RELU, seed=m + n)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)


def test_float64():
    out, expected = _run_prepacked(19, 23, 11, False, True, (4, 8, 24, True, False),
                                   dtype="float64")
    np.testing.assert_allclose(out, expected, **TOL["float64"])


def test_a_matrix_vector_product_reads_b_as_stored():
    # One row against PyTorch-layout weights runs the matrix-vector product, which reads
    # each row of B once: packing it would gain nothing.
    assert mm.prepacked_tiles((1, 784), False, (256, 784), True, "float32") is None
    assert mm.prepacked_tiles((1, 784), False, (784, 256), False, "float32") is not None
