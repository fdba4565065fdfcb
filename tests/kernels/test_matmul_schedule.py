"""The tuned matmul schedule (``dlsys.kernels.matmul``) against numpy, and its tuning log.

Searches are kept tiny here (small shapes, two candidates), and ``DLSYS_TUNE=0`` is the
default so that tests which only check correctness never time anything.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, tirx

from dlsys import autodiff as ad
from dlsys import tvm_op
from dlsys.errors import ArgumentError
from dlsys.kernels import tuning
from dlsys.kernels.build import make_target
from dlsys.kernels.common import epilogue
from dlsys.kernels.cpu import facts_for
from dlsys.kernels.elementwise import compute as formulas
from dlsys.kernels.matmul import compute
from dlsys.kernels.matmul import search as mm
from dlsys.kernels.schedule import SCHEDULES, apply_schedule

# Register files of CPUs this machine need not be: tiles are chosen from facts alone.
AVX2, AVX512, NEON = (facts_for("znver3"), facts_for("skylake-avx512"),
                      facts_for("neoverse-n1", "aarch64-linux-gnu"))


TOL = {"float32": {"rtol": 1e-4, "atol": 1e-4}, "float64": {"rtol": 1e-10, "atol": 1e-10}}


@pytest.fixture(autouse=True)
def _no_search(monkeypatch):
    monkeypatch.setenv("DLSYS_TUNE", "0")


def _operands(rng, problem: mm.MatmulProblem):
    shape_a, shape_b = problem.shapes()
    a = rng.standard_normal(shape_a).astype(problem.dtype)
    b = rng.standard_normal(shape_b).astype(problem.dtype)
    reference = (a.T if problem.trans_a else a) @ (b.T if problem.trans_b else b)
    return a, b, reference


def _run(func, *arrays, out_shape, dtype):
    out = tvm.runtime.empty(out_shape, dtype)
    func(*(tvm.runtime.tensor(np.ascontiguousarray(x)) for x in arrays), out)
    return out.numpy()


def _build_scheduled(inputs, outputs, schedule):
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    sch.work_on("main")
    schedule(sch)
    return tvm.tirx.build(sch.mod, target=make_target("llvm"))["main"]


SHAPES = [(1, 1, 1), (1, 17, 5), (13, 1, 7), (7, 9, 5), (31, 37, 41), (64, 48, 40),
          (97, 100, 10)]


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_heuristic_config_matches_numpy(m, n, k, trans_a, trans_b):
    problem = mm.MatmulProblem(m, n, k, trans_a, trans_b, "float32")
    a, b, reference = _operands(np.random.default_rng(m * n * k), problem)
    kernel = tvm_op.make_matrix_mul(a.shape, trans_a, b.shape, trans_b, "llvm", "llvm", "mm")
    out = _run(kernel.func, a, b, out_shape=(m, n), dtype="float32")
    np.testing.assert_allclose(out, reference, **TOL["float32"])


CONFIGS = [mm.MatmulConfig(6, 16, 16), mm.MatmulConfig(5, 16, 32, pack_a=False),
           mm.MatmulConfig(4, 8, 16), mm.MatmulConfig(8, 8, 8, pack_a=False),
           mm.MatmulConfig(3, 16, 48), mm.MatmulConfig(1, 8, 40),
           mm.MatmulConfig(8, 5, 5, vec_m=True), mm.MatmulConfig(16, 4, 8, vec_m=True)]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True)])
def test_every_config_shape_is_correct(config, trans_a, trans_b):
    # Neither 37 nor 29 is a multiple of any tile: every config pads both M and N.
    problem = mm.MatmulProblem(37, 29, 23, trans_a, trans_b, "float32")
    if not config.fits(problem):
        n_pad = -(-problem.n // config.nr) * config.nr
        config = mm.MatmulConfig(config.mr, config.nr, n_pad, config.pack_a)
    a, b, reference = _operands(np.random.default_rng(1), problem)
    inputs, outputs = compute.matmul(a.shape, trans_a, b.shape, trans_b, "float32")
    func = _build_scheduled(inputs, outputs, lambda s: mm.apply_config(s, problem, config))
    out = _run(func, a, b, out_shape=(37, 29), dtype="float32")
    np.testing.assert_allclose(out, reference, **TOL["float32"])


def test_float64():
    problem = mm.MatmulProblem(19, 23, 11, False, True, "float64")
    a, b, reference = _operands(np.random.default_rng(2), problem)
    kernel = tvm_op.make_matrix_mul(a.shape, False, b.shape, True, "llvm", "llvm", "mm",
                                    dtype="float64")
    out = _run(kernel.func, a, b, out_shape=(19, 23), dtype="float64")
    np.testing.assert_allclose(out, reference, **TOL["float64"])


def _bias_relu(shape_a, trans_a, shape_b, trans_b, dtype):
    """``relu(op(A) @ op(B) + bias)``: the forward epilogue of a dense layer."""
    (a, b), (product,) = compute.matmul(shape_a, trans_a, shape_b, trans_b, dtype)
    m, n = (int(d) for d in product.shape)
    bias = te.placeholder((n,), dtype=dtype, name="bias")
    biased = te.compute((m, n), lambda i, j: product[i, j] + bias[j], name="bias_add")
    out = te.compute((m, n), lambda i, j: te.max(biased[i, j], tirx.const(0, dtype)),
                     name="relu")
    return [a, b, bias], [out]


def _relu_mask(shape_a, trans_a, shape_b, trans_b, dtype):
    """``(H > 0) * (op(A) @ op(B))``: the backward epilogue through a relu."""
    (a, b), (product,) = compute.matmul(shape_a, trans_a, shape_b, trans_b, dtype)
    m, n = (int(d) for d in product.shape)
    h = te.placeholder((m, n), dtype=dtype, name="H")
    zero = tirx.const(0, dtype)
    out = te.compute((m, n), lambda i, j: tirx.Select(h[i, j] > zero, product[i, j], zero),
                     name="relu_grad")
    return [a, b, h], [out]


@pytest.mark.parametrize("m,n,k", [(37, 29, 23), (48, 32, 16), (1, 3, 2)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False)])
def test_epilogues_are_fused_and_correct(m, n, k, trans_a, trans_b):
    problem = mm.MatmulProblem(m, n, k, trans_a, trans_b, "float32")
    rng = np.random.default_rng(3)
    a, b, product = _operands(rng, problem)
    bias = rng.standard_normal(n).astype("float32")
    h = rng.standard_normal((m, n)).astype("float32")

    inputs, outputs = _bias_relu(a.shape, trans_a, b.shape, trans_b, "float32")
    func = _build_scheduled(inputs, outputs, SCHEDULES["matmul"])
    out = _run(func, a, b, bias, out_shape=(m, n), dtype="float32")
    np.testing.assert_allclose(out, np.maximum(product + bias, 0), **TOL["float32"])

    inputs, outputs = _relu_mask(a.shape, trans_a, b.shape, trans_b, "float32")
    func = _build_scheduled(inputs, outputs, SCHEDULES["matmul"])
    out = _run(func, a, b, h, out_shape=(m, n), dtype="float32")
    np.testing.assert_allclose(out, np.where(h > 0, product, 0), **TOL["float32"])


# Two-vector tiles whose last vector is partial (a peeled write-back where the host has 16
# lanes or fewer), and B in slabs narrower than N (A packed once for every slab).
@pytest.mark.parametrize("config", [mm.MatmulConfig(6, 16, 32),
                                    mm.MatmulConfig(8, 3, 30, vec_m=True),
                                    mm.MatmulConfig(6, 32, 32), mm.MatmulConfig(4, 16, 16),
                                    mm.MatmulConfig(5, 16, 16, pack_a=False)], ids=str)
@pytest.mark.parametrize("trans_a,trans_b", [(True, False), (False, True)])
def test_epilogue_with_explicit_config(config, trans_a, trans_b):
    problem = mm.MatmulProblem(37, 29, 23, trans_a, trans_b, "float32")
    rng = np.random.default_rng(7)
    a, b, product = _operands(rng, problem)
    bias = rng.standard_normal(29).astype("float32")
    inputs, outputs = _bias_relu(a.shape, trans_a, b.shape, trans_b, "float32")
    func = _build_scheduled(inputs, outputs, lambda s: mm.apply_config(s, problem, config))
    out = _run(func, a, b, bias, out_shape=(37, 29), dtype="float32")
    np.testing.assert_allclose(out, np.maximum(product + bias, 0), **TOL["float32"])


# B read where it is stored (no packing): whole column tiles of an untransposed B, with
# padded rows (A packed), whole rows (A in place), slabs narrower than N, a partial vector.
@pytest.mark.parametrize("config", [mm.MatmulConfig(6, 16, 32, pack_b=False),
                                    mm.MatmulConfig(4, 8, 16, pack_a=False, pack_b=False),
                                    mm.MatmulConfig(5, 32, 32, pack_b=False),
                                    mm.MatmulConfig(8, 4, 8, pack_b=False)], ids=str)
@pytest.mark.parametrize("trans_a", [False, True])
def test_b_read_in_place(config, trans_a):
    m = 36 if not config.pack_a else 37
    problem = mm.MatmulProblem(m, 32, 23, trans_a, False, "float32")
    assert config.fits(problem)
    rng = np.random.default_rng(8)
    a, b, product = _operands(rng, problem)
    bias = rng.standard_normal(32).astype("float32")
    inputs, outputs = _bias_relu(a.shape, trans_a, b.shape, False, "float32")
    func = _build_scheduled(inputs, outputs, lambda s: mm.apply_config(s, problem, config))
    out = _run(func, a, b, bias, out_shape=(m, 32), dtype="float32")
    np.testing.assert_allclose(out, np.maximum(product + bias, 0), **TOL["float32"])


def test_b_in_place_needs_whole_untransposed_column_tiles():
    in_place = mm.MatmulConfig(6, 16, 32, pack_b=False)
    assert in_place.fits(mm.MatmulProblem(40, 32, 9, False, False, "float32"))
    assert not in_place.fits(mm.MatmulProblem(40, 32, 9, False, True, "float32"))  # B^T
    assert not mm.MatmulConfig(6, 16, 48, pack_b=False).fits(
        mm.MatmulProblem(40, 40, 9, False, False, "float32"))  # 40 pads to 48
    # Offered to the search where it fits, right after the favourite it varies.
    problem = mm.MatmulProblem(256, 256, 1000, True, False, "float32")
    first, second = mm.candidate_configs(problem, 2)
    assert second == dataclasses.replace(first, pack_b=False)


def test_epilogue_is_inlined_into_the_tile():
    problem = mm.MatmulProblem(40, 32, 16, False, False, "float32")
    inputs, outputs = _bias_relu((40, 16), False, (16, 32), False, "float32")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    sch.work_on("main")
    mm.apply_config(sch, problem, mm.heuristic_config(problem))
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    # Only the two packs and the tiled loop nest remain at the root: no separate epilogue pass.
    assert "bias_add" not in names and "relu" not in names


def _loop_kinds(sch: s_tir.Schedule, block_name: str) -> list[str]:
    """The kinds ("serial", "vectorized", "unrolled"...) of a block's loops, outermost first."""
    kinds = {0: "serial", 1: "parallel", 2: "vectorized", 3: "unrolled"}
    return [kinds.get(int(sch.get(loop).kind), "other")
            for loop in sch.get_loops(sch.get_sblock(block_name))]


@pytest.mark.parametrize("m, n, k, parallel", [(256, 784, 1, True), (40, 32, 16, False),
                                               (100, 256, 1, False)])
def test_large_outputs_are_written_in_parallel_however_few_their_products(m, n, k, parallel):
    # A weight's gradient at batch 1 (an outer product, 256 x 784 here) has too few
    # multiply-adds to share, but its writes are shared: rows split as the update splits them.
    problem = mm.MatmulProblem(m, n, k, True, False, "float32")
    inputs, outputs = compute.matmul((k, m), True, (k, n), False, "float32")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    sch.work_on("main")
    mm.apply_config(sch, problem, mm.heuristic_config(problem))
    assert (_loop_kinds(sch, "matmul_update")[0] == "parallel") == parallel


def test_clipped_tiles_store_whole_vectors_and_a_is_packed_without_scatters():
    # N = 40 pads to 64 with two-vector column tiles: the last tile holds one whole vector
    # and a partial one. Its write-back is still a vectorised loop (the partial vector is
    # peeled off when lowering), and A's panel copy stores contiguously: k outside the rows.
    cpu = facts_for("skylake-avx512")
    problem = mm.MatmulProblem(31, 40, 24, False, False, "float32", cpu)
    config = mm.MatmulConfig(6, 32, 64, pack_a=True)
    inputs, outputs = _bias_relu((31, 24), False, (24, 40), False, "float32")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}))
    sch.work_on("main")
    mm.apply_config(sch, problem, config)
    assert _loop_kinds(sch, "matmul_pad")[-1] == "vectorized"  # the epilogue inlined in it
    assert _loop_kinds(sch, "A_pad_global")[-1] == "unrolled"
    assert "pragma_loop_partition_hint" in sch.mod.script()


def test_fallback_for_a_block_that_is_not_a_plain_matmul():
    # C[i, j] = sum_k A[i, k] * A[k, j]: both operands the same buffer, so the tuned schedule
    # refuses and the baseline runs.
    a = te.placeholder((8, 8), name="A")
    k = te.reduce_axis((0, 8), name="k")
    c = te.compute((8, 8), lambda i, j: te.sum(a[i, k] * a[k, j] * 2.0, axis=k), name="matmul")
    func = _build_scheduled([a], [c], SCHEDULES["matmul"])
    x = np.random.default_rng(4).standard_normal((8, 8)).astype("float32")
    np.testing.assert_allclose(_run(func, x, out_shape=(8, 8), dtype="float32"), 2 * x @ x,
                               **TOL["float32"])


def test_naive_and_tuned_agree(monkeypatch):
    problem = mm.MatmulProblem(33, 20, 17, True, False, "float32")
    a, b, reference = _operands(np.random.default_rng(5), problem)
    outs = {}
    for mode in ("naive", "tuned"):
        monkeypatch.setenv("DLSYS_SCHEDULE", mode)
        kernel = tvm_op.make_matrix_mul(a.shape, True, b.shape, False, "llvm", "llvm", "mm")
        outs[mode] = _run(kernel.func, a, b, out_shape=(33, 20), dtype="float32")
    np.testing.assert_allclose(outs["naive"], outs["tuned"], **TOL["float32"])
    np.testing.assert_allclose(outs["tuned"], reference, **TOL["float32"])


def test_naive_mode_leaves_the_default_loop_nest(monkeypatch):
    monkeypatch.setenv("DLSYS_SCHEDULE", "naive")
    inputs, outputs = compute.matmul((5, 3), False, (3, 4), False, "float32")
    mod = tvm.IRModule({"main": te.create_prim_func(inputs + outputs)})
    assert apply_schedule(mod, "matmul", make_target("llvm")) is mod


SEARCH_PROBLEM = mm.MatmulProblem(64, 48, 40, False, True, "float32")


def _log_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.setenv("DLSYS_TUNE", "1")
    monkeypatch.setenv("DLSYS_TUNE_BUDGET", "inf")  # whatever earlier tests spent
    monkeypatch.setattr(mm, "SEARCH_CANDIDATES", 2)
    monkeypatch.setattr(mm, "SEARCH_MIN_MACS", 1)
    return tuning.tuning_log_path(mm.LOG_KIND)


def test_first_use_searches_and_logs_then_reuses(tmp_path, monkeypatch):
    path = _log_path(tmp_path, monkeypatch)
    assert path.parent == tmp_path / "kernels"  # inside the folder named (issue 16)
    config = mm.choose_config(SEARCH_PROBLEM)
    entries = json.loads(path.read_text())["entries"]
    record = entries[SEARCH_PROBLEM.key()]
    assert mm.MatmulConfig.from_json(record, SEARCH_PROBLEM) == config
    assert record["gflops"] > 0 and tuning.system_cpu() in SEARCH_PROBLEM.key()

    # A second use reads the log instead of timing anything.
    monkeypatch.setattr(mm, "tune_matmul", lambda *a, **k: pytest.fail("searched again"))
    assert mm.choose_config(SEARCH_PROBLEM) == config


def test_logged_config_is_used(tmp_path, monkeypatch):
    _log_path(tmp_path, monkeypatch)
    chosen = mm.MatmulConfig(4, 8, 48, pack_a=False)
    problem = dataclasses.replace(SEARCH_PROBLEM, cpu=AVX2)  # 8 lanes: nr = 8 is one vector
    tuning.record(mm.LOG_KIND, problem.key(), {"mr": 4, "nr": 8, "nc": 48, "pack_a": False})
    assert mm.choose_config(problem) == chosen


@pytest.mark.parametrize("text", ["{not json", '{"version": 1, "entries": []}', "[]",
                                  '{"version": 1, "entries": {"KEY": {"mr": "x"}}}',
                                  '{"version": 1, "entries": {"KEY": {"mr": 1000, "nr": 8, '
                                  '"nc": 48}}}'])
def test_corrupt_log_is_ignored_and_rebuilt(tmp_path, monkeypatch, text):
    path = _log_path(tmp_path, monkeypatch)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("KEY", SEARCH_PROBLEM.key()))
    calls = []
    real_tune = mm.tune_matmul

    def counting_tune(problem, *args, **kwargs):
        calls.append(problem)
        return real_tune(problem, limit=1)

    monkeypatch.setattr(mm, "tune_matmul", counting_tune)
    config = mm.choose_config(SEARCH_PROBLEM)
    assert calls == [SEARCH_PROBLEM]
    rebuilt = json.loads(path.read_text())
    assert mm.MatmulConfig.from_json(rebuilt["entries"][SEARCH_PROBLEM.key()],
                                     SEARCH_PROBLEM) == config


def test_tune_off_uses_the_heuristic(tmp_path, monkeypatch):
    path = _log_path(tmp_path, monkeypatch)
    monkeypatch.setenv("DLSYS_TUNE", "0")
    assert mm.choose_config(SEARCH_PROBLEM) == mm.heuristic_config(SEARCH_PROBLEM)
    assert not path.exists()


def test_searches_stop_when_the_process_budget_is_spent(tmp_path, monkeypatch):
    path = _log_path(tmp_path, monkeypatch)
    monkeypatch.setenv("DLSYS_TUNE_BUDGET", "30")
    monkeypatch.setattr(tuning, "_search_seconds_spent", 0.0)
    monkeypatch.setattr(tuning, "_searches_done", 0)
    searched = mm.choose_config(SEARCH_PROBLEM)
    assert SEARCH_PROBLEM.key() in json.loads(path.read_text())["entries"]
    assert 0 < tuning._search_seconds_spent < 30  # the search's own time was counted
    assert tuning._searches_done == 1
    # 20 s in two searches: a third would be expected to end at 30 s, past the budget. A new
    # shape takes the heuristic tiles, unlogged, so that a later process searches it.
    monkeypatch.setattr(tuning, "_search_seconds_spent", 20.0)
    monkeypatch.setattr(tuning, "_searches_done", 2)
    other = dataclasses.replace(SEARCH_PROBLEM, m=80)
    monkeypatch.setattr(mm, "tune_matmul", lambda *a, **k: pytest.fail("searched"))
    assert mm.choose_config(other) == mm.heuristic_config(other)
    assert other.key() not in json.loads(path.read_text())["entries"]
    assert mm.choose_config(SEARCH_PROBLEM) == searched  # logged tiles cost no budget
    # In four searches it would still end within the budget.
    monkeypatch.setattr(tuning, "_searches_done", 4)
    assert tuning.search_allowed()
    monkeypatch.setenv("DLSYS_TUNE_BUDGET", "0")
    monkeypatch.setattr(tuning, "_search_seconds_spent", 0.0)
    assert not tuning.search_allowed()


@pytest.mark.parametrize("value", ["fast", "-1", "nan"])
def test_a_bad_search_budget_is_named_when_a_kernel_is_built(monkeypatch, value):
    monkeypatch.setenv("DLSYS_TUNE_BUDGET", value)
    x, w = ad.Variable("x"), ad.Variable("w")
    with pytest.raises(ArgumentError, match=f"DLSYS_TUNE_BUDGET .*got '{value}'"):
        ad.Executor([ad.matmul_op(x, w)]).run({x: np.ones((2, 3)), w: np.ones((3, 4))})


def test_shipped_table_is_valid():
    for path in sorted(tuning.SHIPPED_DIR.glob("matmul_*.json")):
        data = json.loads(path.read_text())
        assert data["version"] == tuning.LOG_VERSION
        for key, record in data["entries"].items():
            cpu, dtype, sizes, trans = key.split("/")
            m, rest = sizes[1:].split("n")
            n, k = rest.split("k")
            # Checked against the register file of the CPU the table was measured on.
            problem = mm.MatmulProblem(int(m), int(n), int(k), trans[2] == "1",
                                       trans[5] == "1", dtype, cpu=facts_for(cpu),
                                       b_prepacked=trans.endswith("pb1"))
            assert problem.key(cpu) == key
            assert mm.MatmulConfig.from_json(record, problem) is not None, key


@pytest.mark.parametrize("steps", [[("bias_add",), ("relu",)], [("relu_mask",)],
                                   [("add",), ("mul_const", 0.5)]])
def test_fusion_pass_epilogues(steps):
    # The chains the fusion pass emits (compute.matmul_epilogue), through the public builder.
    m, n, k = 29, 19, 13
    problem = mm.MatmulProblem(m, n, k, False, True, "float32")
    rng = np.random.default_rng(6)
    a, b, value = _operands(rng, problem)
    operands = []
    for kind, *extra in steps:
        if epilogue.EPILOGUE_OPERANDS[kind] == "vector":
            operands.append(rng.standard_normal(n).astype("float32"))
            value = value + operands[-1]
        elif epilogue.EPILOGUE_OPERANDS[kind] == "matrix":
            operands.append(rng.standard_normal((m, n)).astype("float32"))
            value = np.where(operands[-1] > 0, value, 0) if kind == "relu_mask" \
                else value + operands[-1]
        elif kind == "relu":
            value = np.maximum(value, 0)
        else:
            value = value * extra[0]
    kernel = tvm_op.make_matmul_epilogue(a.shape, False, b.shape, True, steps, "llvm", "llvm",
                                         "fused")
    out = _run(kernel.func, a, b, *operands, out_shape=(m, n), dtype="float32")
    np.testing.assert_allclose(out, value, **TOL["float32"])


@pytest.mark.parametrize("cpu, lanes, registers", [(AVX2, 8, 16), (AVX512, 16, 32),
                                                   (NEON, 4, 32)], ids=["avx2", "avx512", "neon"])
@pytest.mark.parametrize("m, n, k", [(1000, 256, 784), (1000, 100, 256), (1000, 10, 100),
                                     (784, 256, 1000), (1024, 1024, 1024)])
def test_tiles_fit_each_register_file(cpu, lanes, registers, m, n, k):
    # Chosen for a CPU from its facts alone: none of these CPUs needs to be this machine.
    problem = mm.MatmulProblem(m, n, k, False, False, "float32", cpu=cpu)
    assert problem.lanes == lanes
    for config in mm.candidate_configs(problem, limit=64):
        if config.vec_m:
            vectors, broadcast = config.mr // lanes, config.nr
        else:
            vectors, broadcast = -(-config.nr // lanes), config.mr
        assert vectors * broadcast + vectors + 1 <= registers, config
        assert mm.MatmulConfig.from_json(dataclasses.asdict(config), problem) == config
    best = mm.heuristic_config(problem)
    if n >= 4 * lanes:  # a wide output uses the larger register file for a larger tile
        used = best.mr * -(-best.nr // lanes)
        assert used > (12 if registers == 32 else 8), best


def test_a_tile_for_avx512_is_refused_on_avx2():
    wide = {"mr": 6, "nr": 64, "nc": 256, "pack_a": True, "vec_m": False}
    assert mm.MatmulConfig.from_json(
        wide, mm.MatmulProblem(1000, 256, 784, False, False, "float32", cpu=AVX512)) is not None
    assert mm.MatmulConfig.from_json(
        wide, mm.MatmulProblem(1000, 256, 784, False, False, "float32", cpu=AVX2)) is None


@pytest.mark.parametrize("n, k", [(256, 784), (100, 256), (255, 84), (10, 100), (33, 12),
                                  (1, 16), (7, 7)])
@pytest.mark.parametrize("fused", [False, True])
def test_a_single_row_against_pytorch_weights_is_a_matrix_vector_product(n, k, fused):
    # A batch of one through a dense layer stored (out, in): lane-wise dot products, no
    # packing of B; a k with no divisor of 4+ lanes (7) keeps the tiled schedule. Values
    # against numpy either way, with the layer's bias and relu fused or not.
    problem = mm.MatmulProblem(1, n, k, False, True, "float32")
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((1, k)), rng.standard_normal((n, k))
    bias = rng.standard_normal(n)
    steps = [("bias_add",), ("relu",)] if fused else []
    inputs, outputs = (compute.matmul_epilogue(
        (1, k), False, (n, k), True,
        [(epilogue.epilogue_from_label(label), formula) for (label,), formula
         in zip(steps, (formulas.add, formulas.relu))], "float32"))
    scheduled = apply_schedule(tvm.IRModule({"main": te.create_prim_func(inputs + outputs)}),
                               "matmul", make_target("llvm")).script()
    assert ("matmul_rf" in scheduled) == (mm.gemv_lanes(problem) is not None)
    kernel = (tvm_op.make_matmul_epilogue((1, k), False, (n, k), True, steps, "llvm", "llvm",
                                          "gemv") if fused else
              tvm_op.make_matrix_mul((1, k), False, (n, k), True, "llvm", "llvm", "gemv"))
    args = [tvm.runtime.tensor(x.astype("float32")) for x in ([a, b, bias] if fused else [a, b])]
    out = tvm.runtime.empty((1, n), "float32")
    kernel(*args, out)
    expected = a @ b.T + (bias if fused else 0)
    np.testing.assert_allclose(out.numpy(), np.maximum(expected, 0) if fused else expected,
                               rtol=1e-4, atol=1e-4)
