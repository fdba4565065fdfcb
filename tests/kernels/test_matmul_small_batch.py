"""Small-batch products that read B where it is stored instead of copying it at every call,
against numpy, and the rules that choose them (``dlsys.kernels.matmul.config``): tiles of
row vectors for a transposed B (a dense layer's forward, ``x @ W^T``), and column tiles
streaming an untransposed B (its input gradient, ``dY @ W``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, tirx

from dlsys.kernels.build import make_target
from dlsys.kernels.cpu import facts_for
from dlsys.kernels.matmul import compute
from dlsys.kernels.matmul import search as mm
from dlsys.kernels.matmul.config import MIN_PARALLEL_JOBS
from dlsys.kernels.schedule import SCHEDULES

TOL = {"rtol": 1e-4, "atol": 1e-4}
# Tiles are chosen from a CPU's facts alone; this one has 16 float32 lanes.
AVX512 = facts_for("skylake-avx512")


@pytest.fixture(autouse=True)
def _no_search(monkeypatch):
    monkeypatch.setenv("DLSYS_TUNE", "0")


def _in_place(problem: mm.MatmulProblem) -> mm.MatmulConfig:
    """The row-vector tile reading B in place that the candidates offer for ``problem``."""
    offered = [c for c in mm.candidate_configs(problem, 64) if c.vec_m and not c.pack_b]
    assert len(offered) == 1, offered
    return offered[0]


def _bias_relu(shape_a, trans_a, shape_b, trans_b):
    """``relu(op(A) @ op(B) + bias)``: a dense layer's forward with its epilogue."""
    (a, b), (product,) = compute.matmul(shape_a, trans_a, shape_b, trans_b, "float32")
    m, n = (int(d) for d in product.shape)
    bias = te.placeholder((n,), dtype="float32", name="bias")
    biased = te.compute((m, n), lambda i, j: product[i, j] + bias[j], name="bias_add")
    out = te.compute((m, n), lambda i, j: te.max(biased[i, j], tirx.const(0, "float32")),
                     name="relu")
    return [a, b, bias], [out]


def _build(inputs, outputs, schedule):
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    sch.work_on("main")
    schedule(sch)
    return tvm.tirx.build(sch.mod, target=make_target("llvm"))["main"]


def _call(func, *arrays, out_shape):
    out = tvm.runtime.empty(out_shape, "float32")
    func(*(tvm.runtime.tensor(np.ascontiguousarray(x)) for x in arrays), out)
    return out.numpy()


# M below one vector (a partial row vector), M padded past one vector (A's padded rows),
# and K odd so that nothing lines up with a vector along k.
@pytest.mark.parametrize("m,n,k", [(5, 24, 37), (20, 36, 19)])
@pytest.mark.parametrize("trans_a", [False, True])
def test_row_vectors_reading_b_in_place_match_numpy(m, n, k, trans_a):
    problem = mm.MatmulProblem(m, n, k, trans_a, True, "float32")
    config = _in_place(problem)
    assert config.fits(problem) and n % config.nr == 0
    rng = np.random.default_rng(m + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype("float32")
    b = rng.standard_normal((n, k)).astype("float32")
    bias = rng.standard_normal(n).astype("float32")
    inputs, outputs = _bias_relu(a.shape, trans_a, b.shape, True)
    func = _build(inputs, outputs, lambda s: mm.apply_config(s, problem, config))
    out = _call(func, a, b, bias, out_shape=(m, n))
    reference = (a.T if trans_a else a) @ b.T
    np.testing.assert_allclose(out, np.maximum(reference + bias, 0), **TOL)


def test_no_copy_of_b_is_made():
    problem = mm.MatmulProblem(16, 32, 24, False, True, "float32")
    inputs, outputs = compute.matmul((16, 24), False, (32, 24), True, "float32")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    sch.work_on("main")
    mm.apply_config(sch, problem, _in_place(problem))
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    assert not any(name.startswith("B") for name in names), names  # only A is packed


def test_the_scheduled_kernel_of_a_small_batch_forward_matches_numpy():
    # Through the registered schedule, as an operator's kernel is built: the heuristic picks
    # the tiles for 8 x 48 x 40 (B would be copied whole for 8 rows).
    _check_scheduled_bias_relu(8, 48, 40, trans_b=True, seed=3)


def _check_scheduled_bias_relu(m: int, n: int, k: int, trans_b: bool, seed: int) -> None:
    """relu(A @ op(B) + bias) through the registered matmul schedule, against numpy."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype("float32")
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype("float32")
    bias = rng.standard_normal(n).astype("float32")
    inputs, outputs = _bias_relu(a.shape, False, b.shape, trans_b)
    func = _build(inputs, outputs, SCHEDULES["matmul"])
    out = _call(func, a, b, bias, out_shape=(m, n))
    np.testing.assert_allclose(out, np.maximum(a @ (b.T if trans_b else b) + bias, 0), **TOL)


@pytest.mark.parametrize("m,n,k", [(4, 256, 784), (16, 256, 784), (64, 256, 784),
                                   (16, 100, 256), (4, 10, 100)])
def test_small_batches_read_b_in_place(m, n, k):
    # B (n x k) is copied whole at every call by a column-vector tile; A (m x k) is smaller.
    problem = mm.MatmulProblem(m, n, k, False, True, "float32", AVX512)
    chosen = mm.heuristic_config(problem)
    assert chosen.vec_m and not chosen.pack_b
    assert chosen.mr == min(m, 16) and n % chosen.nr == 0 and 4 <= chosen.nr <= 16
    # Cut into enough pieces that both cores get some, where the panels allow.
    row_tiles = -(-m // chosen.mr)
    assert n // chosen.nc * row_tiles >= min(MIN_PARALLEL_JOBS, n // chosen.nr * row_tiles)


@pytest.mark.parametrize("m,n,k", [(1000, 256, 784), (64, 10, 100), (256, 10, 784),
                                   (1000, 100, 10)])
def test_large_batches_or_narrow_outputs_copy_b(m, n, k):
    # A as large as B, or B tiny: copying B costs less than copying A into row vectors; and
    # where K is short, storing the output element by element costs more than both.
    # The in-place tile is still offered second, for a search to time.
    problem = mm.MatmulProblem(m, n, k, False, True, "float32", AVX512)
    first, second = mm.candidate_configs(problem, 2)
    assert first.pack_b and not first.vec_m
    assert second.vec_m and not second.pack_b


def test_only_a_transposed_b_not_packed_ahead_is_read_by_row_vectors():
    row_vectors = mm.MatmulConfig(16, 8, 32, True, True, pack_b=False)
    assert row_vectors.fits(mm.MatmulProblem(16, 32, 9, False, True, "float32"))
    assert not row_vectors.fits(mm.MatmulProblem(16, 32, 9, False, False, "float32"))
    assert not row_vectors.fits(mm.MatmulProblem(16, 36, 9, False, True, "float32"))  # 36 % 8
    assert not row_vectors.fits(
        mm.MatmulProblem(16, 32, 9, False, True, "float32", b_prepacked=True))
    # No column count in 4..16 divides a prime N: nothing is offered.
    prime = mm.MatmulProblem(16, 37, 64, False, True, "float32")
    assert not any(c.vec_m and not c.pack_b for c in mm.candidate_configs(prime, 64))


def test_a_logged_in_place_config_is_read_back():
    problem = mm.MatmulProblem(16, 256, 784, False, True, "float32", AVX512)
    config = mm.heuristic_config(problem)
    record = json.loads(json.dumps({"mr": config.mr, "nr": config.nr, "nc": config.nc,
                                    "pack_a": True, "vec_m": True, "pack_b": False}))
    assert mm.MatmulConfig.from_json(record, problem) == config


@pytest.mark.parametrize("m,k,in_place", [(4, 100, True), (16, 100, True), (64, 100, True),
                                          (1000, 100, False)])
def test_an_untransposed_b_is_read_in_place_unless_its_copy_is_shared_by_many_rows(
        m, k, in_place):
    # A layer's input gradient dY @ W: copying W costs as much as a small batch's product
    # (8 multiply-adds' time per element against m per element).
    problem = mm.MatmulProblem(m, 256, k, False, False, "float32", AVX512)
    first, second = mm.candidate_configs(problem, 2)
    assert first.pack_b != in_place and not first.vec_m
    assert second == mm.MatmulConfig(first.mr, first.nr, first.nc, first.pack_a,
                                      pack_b=in_place)


def test_an_untransposed_b_read_in_place_matches_numpy():
    problem = mm.MatmulProblem(9, 32, 21, False, False, "float32")
    config = mm.heuristic_config(problem)
    assert not config.pack_b
    _check_scheduled_bias_relu(9, 32, 21, trans_b=False, seed=5)


@pytest.mark.parametrize("m", [1, 16])
def test_b_is_read_in_place_by_a_narrower_tile_where_n_is_no_whole_number_of_the_best(m):
    # LeNet-5's input gradient through its 400 -> 120 layer: N = 400 is no whole number of
    # the favourite tile's 64 columns, so that tile must copy B; a tile of one vector,
    # which divides 400, reads it where it lies (1 x 400 x 120: 21 -> 2.6 us, znver4).
    problem = mm.MatmulProblem(m, 400, 120, False, False, "float32", AVX512)
    packed = mm.candidate_configs(problem, 4)
    first = packed[0]
    assert not first.pack_b and first.nr == 16 and 400 % first.nc == 0
    assert any(config.pack_b and config.nr == 64 for config in packed)


def test_a_narrower_tile_reading_b_in_place_matches_numpy():
    config = mm.heuristic_config(mm.MatmulProblem(2, 400, 24, False, False, "float32"))
    assert not config.pack_b and 400 % config.nr == 0
    _check_scheduled_bias_relu(2, 400, 24, trans_b=False, seed=7)


@pytest.mark.parametrize("m,n,k,short", [(256, 784, 16, True), (100, 256, 1, True),
                                         (64, 784, 64, True), (256, 784, 128, False),
                                         (256, 100, 16, False), (10, 784, 16, False)])
@pytest.mark.parametrize("trans_a", [False, True])
def test_a_short_reduction_gets_a_small_tile_copying_nothing(m, n, k, short, trans_a):
    # A weight's gradient at a small batch (K = batch): 4 rows by one vector, no copy; not
    # for K past 64, nor where N is no whole number of vectors or M of 4 rows.
    problem = mm.MatmulProblem(m, n, k, trans_a, False, "float32", AVX512)
    chosen = mm.heuristic_config(problem)
    assert ((chosen.mr, chosen.nr, chosen.pack_a, chosen.pack_b) == (4, 16, False, False)) \
        == short


@pytest.mark.parametrize("trans_a", [False, True])
def test_a_short_reduction_matches_numpy(trans_a):
    problem = mm.MatmulProblem(12, 48, 5, trans_a, False, "float32")
    config = mm.heuristic_config(problem)
    assert (config.mr, config.pack_a, config.pack_b) == (4, False, False)
    rng = np.random.default_rng(11)
    a = rng.standard_normal((5, 12) if trans_a else (12, 5)).astype("float32")
    b = rng.standard_normal((5, 48)).astype("float32")
    bias = rng.standard_normal(48).astype("float32")
    inputs, outputs = _bias_relu(a.shape, trans_a, b.shape, False)
    func = _build(inputs, outputs, SCHEDULES["matmul"])
    out = _call(func, a, b, bias, out_shape=(12, 48))
    np.testing.assert_allclose(out, np.maximum((a.T if trans_a else a) @ b + bias, 0), **TOL)


@pytest.mark.parametrize("shape_a,trans_a,shape_b,trans_b", [
    ((2, 8, 40), False, (48, 40), True),      # a dense layer over a sequence: B^T in place
    ((2, 8, 48), True, (2, 8, 32), False),    # its weight gradient, K = 16: the short tile
    ((2, 8, 32), False, (32, 48), False),     # its input gradient: B in place
])
def test_operands_of_rank_three_are_read_in_place_correctly(shape_a, trans_a, shape_b,
                                                            trans_b):
    # An operand of rank 3 is read through the index map of its rows, here by tiles that
    # copy nothing.
    rng = np.random.default_rng(13)
    a = rng.standard_normal(shape_a).astype("float32")
    b = rng.standard_normal(shape_b).astype("float32")
    rows_a, rows_b = a.reshape(-1, shape_a[-1]), b.reshape(-1, shape_b[-1])
    reference = (rows_a.T if trans_a else rows_a) @ (rows_b.T if trans_b else rows_b)
    inputs, outputs = compute.matmul(shape_a, trans_a, shape_b, trans_b, "float32")
    func = _build(inputs, outputs, SCHEDULES["matmul"])
    out_shape = tuple(int(d) for d in outputs[0].shape)
    out = _call(func, a, b, out_shape=out_shape)
    np.testing.assert_allclose(out.reshape(reference.shape), reference, **TOL)
