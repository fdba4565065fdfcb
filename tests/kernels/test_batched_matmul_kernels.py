"""The matmul kernels on operands of rank >= 3 against numpy: the 2-D kernel reading a
stack's rows where they lie (forward with a bias epilogue, the weight-gradient form, a
packed constant B), and the batched kernel (``compute.batched_matmul`` with the schedule of
``dlsys.kernels.matmul.batched``), including padded tiles, epilogues and summed batches.
Each tuned schedule is also applied on its own, so a silent fallback would fail here."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from dlsys.kernels.build import make_target
from dlsys.kernels.common.epilogue import Epilogue, epilogue_from_label
from dlsys.kernels.matmul import batched, compute
from dlsys.kernels.matmul import search as mm
from dlsys.kernels.matmul.schedule import apply_config, matmul_problem
from dlsys.kernels.registry import KernelSpec, elementwise_formula

TOL = {"float32": {"rtol": 1e-4, "atol": 1e-4}, "float64": {"rtol": 1e-10, "atol": 1e-10}}
BIAS = (epilogue_from_label("bias_add"),)


@pytest.fixture(autouse=True)
def _no_search(monkeypatch):
    monkeypatch.setenv("DLSYS_TUNE", "0")


def _op(x: np.ndarray, trans: bool) -> np.ndarray:
    return np.swapaxes(x, -1, -2) if trans else x


def _call(spec: KernelSpec, arrays, out_shape, dtype):
    out = tvm.runtime.empty(out_shape, dtype)
    spec.build("llvm", dtype).func(*(tvm.runtime.tensor(np.ascontiguousarray(x))
                                     for x in arrays), out)
    return out.numpy()


def _schedule(inputs, outputs, schedule) -> None:
    """Apply ``schedule`` to the function alone: a primitive that refuses raises here."""
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    sch.work_on("main")
    schedule(sch)


# (rows of the stack, K, N, trans_B): padded rows and columns, whole tiles, one row
@pytest.mark.parametrize("lead,k,n,trans_b", [((3, 7), 5, 9, False), ((2, 3, 7), 13, 40, True),
                                              ((4, 16), 32, 64, False), ((1, 1), 8, 16, True)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_stack_times_a_matrix_with_a_bias(lead, k, n, trans_b, dtype):
    rng = np.random.default_rng(k + n)
    a = rng.standard_normal((*lead, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    spec = KernelSpec("matmul_epilogue", (a.shape, False, b.shape, trans_b, BIAS))
    out = _call(spec, [a, b, bias], (*lead, n), dtype)
    np.testing.assert_allclose(out, a @ _op(b, trans_b) + bias, **TOL[dtype])


@pytest.mark.parametrize("lead,k,n", [((3, 7), 5, 9), ((2, 16), 24, 32), ((2, 3, 5), 6, 4)])
def test_the_weight_gradient_sums_every_row(lead, k, n):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((*lead, k)).astype("float32")
    g = rng.standard_normal((*lead, n)).astype("float32")
    spec = KernelSpec("matmul", (a.shape, True, g.shape, False))
    out = _call(spec, [a, g], (k, n), "float32")
    np.testing.assert_allclose(out, a.reshape(-1, k).T @ g.reshape(-1, n), **TOL["float32"])


@pytest.mark.parametrize("lead,trans_a,n", [((3, 7), False, 10), ((2, 16), True, 10),
                                            ((4, 30), False, 48)])
def test_every_candidate_tile_applies_to_rows_views(lead, trans_a, n):
    """Padded rows, row vectors, B read in place: each candidate reads the stack's rows."""
    rng = np.random.default_rng(5)
    shape_b = (*lead, n) if trans_a else (24, n)
    inputs, outputs = compute.matmul((*lead, 24), trans_a, shape_b, False, "float32")
    a = rng.standard_normal((*lead, 24)).astype("float32")
    b = rng.standard_normal(shape_b).astype("float32")
    expected = a.reshape(-1, 24).T @ b.reshape(-1, n) if trans_a else a @ b
    base = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    base.work_on("main")
    problem = matmul_problem(base)
    for config in mm.candidate_configs(problem, limit=6):
        sch = base.copy()
        apply_config(sch, problem, config)
        func = tvm.tirx.build(sch.mod, target=make_target("llvm"))["main"]
        out = tvm.runtime.empty(expected.shape, "float32")
        func(tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
        np.testing.assert_allclose(out.numpy(), expected, err_msg=str(config), **TOL["float32"])


@pytest.mark.parametrize("trans_b", [False, True])
def test_a_packed_constant_times_a_stack(trans_b):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 7, 5)).astype("float32")
    b = rng.standard_normal((9, 5) if trans_b else (5, 9)).astype("float32")
    tiles = mm.prepacked_tiles(a.shape, False, b.shape, trans_b, "float32")
    packed = _call(KernelSpec("pack_panels", (b.shape, trans_b, tiles[1])), [b],
                   (-(-9 // tiles[1]), 5, tiles[1]), "float32")
    spec = KernelSpec("matmul_prepacked", (a.shape, False, b.shape, trans_b, tiles, ()))
    out = _call(spec, [a, packed], (3, 7, 9), "float32")
    np.testing.assert_allclose(out, a @ _op(b, trans_b), **TOL["float32"])


BATCHED = [((3, 1, 7, 5), False, (1, 5, 5, 7), False), ((4, 7, 5), False, (4, 9, 5), True),
           ((4, 5, 7), True, (4, 5, 9), False), ((2, 5, 7), True, (2, 9, 5), True),
           ((7, 5), False, (3, 5, 40), False), ((2, 2, 16, 8), False, (2, 2, 16, 8), True),
           ((6, 32, 32), False, (6, 32, 32), False)]


@pytest.mark.parametrize("shape_a,trans_a,shape_b,trans_b", BATCHED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_product_with_an_epilogue(shape_a, trans_a, shape_b, trans_b, dtype):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(shape_a).astype(dtype)
    b = rng.standard_normal(shape_b).astype(dtype)
    expected = np.matmul(_op(a, trans_a), _op(b, trans_b))
    plain = KernelSpec("batched_matmul", (shape_a, trans_a, shape_b, trans_b, expected.shape, ()))
    np.testing.assert_allclose(_call(plain, [a, b], expected.shape, dtype), expected,
                               **TOL[dtype])
    bias = rng.standard_normal(expected.shape[-1]).astype(dtype)
    steps = (*BIAS, Epilogue("relu", "relu"))
    fused = KernelSpec("batched_matmul", (shape_a, trans_a, shape_b, trans_b, expected.shape,
                                          steps))
    np.testing.assert_allclose(_call(fused, [a, b, bias], expected.shape, dtype),
                               np.maximum(expected + bias, 0), **TOL[dtype])
    _schedule(*compute.batched_matmul(shape_a, trans_a, shape_b, trans_b, expected.shape,
                                      [(e, elementwise_formula(e.kind)) for e in steps], dtype),
              batched.schedule_batched_matmul)


SUMMED = [((3, 1, 7, 5), False, (1, 5, 5, 7), False, (3, 1, 7, 7)),
          ((3, 1, 7, 5), False, (1, 5, 5, 7), False, (1, 5, 7, 7)),
          ((3, 1, 7, 5), False, (1, 5, 5, 7), False, (5, 7, 7)),
          ((3, 1, 7, 5), False, (1, 5, 5, 7), False, (7, 7)),
          # a weight per head's gradient, summed over the batch: x (B, 1, T, E), g (B, H, T, D)
          ((4, 1, 16, 8), True, (4, 3, 16, 8), False, (3, 8, 8)),
          ((2, 9, 5), False, (2, 6, 5), True, (9, 6))]


@pytest.mark.parametrize("shape_a,trans_a,shape_b,trans_b,out_shape", SUMMED)
def test_batched_product_summed_over_broadcast_axes(shape_a, trans_a, shape_b, trans_b,
                                                    out_shape):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(shape_a)
    b = rng.standard_normal(shape_b)
    product = np.matmul(_op(a, trans_a), _op(b, trans_b))
    lead = product.ndim - len(out_shape)
    expected = product.sum(axis=tuple(range(lead)))
    axes = tuple(d for d, n in enumerate(out_shape) if n == 1 and expected.shape[d] != 1)
    expected = expected.sum(axis=axes, keepdims=True)
    spec = KernelSpec("batched_matmul", (shape_a, trans_a, shape_b, trans_b, out_shape, ()))
    np.testing.assert_allclose(_call(spec, [a, b], out_shape, "float64"), expected,
                               **TOL["float64"])
    _schedule(*compute.batched_matmul(shape_a, trans_a, shape_b, trans_b, out_shape, [],
                                      "float64"),
              batched.schedule_summed_matmul)
