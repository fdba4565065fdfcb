"""``dlsys.compile`` / ``dlsys compile``: a model as one shared library, loaded without dlsys.

The ONNX models' libraries are loaded in a fresh virtual environment holding only
apache-tvm-ffi and numpy, by the five lines docs/deployment.md shows; the C++ example is
built with the system compiler; the CPU check is made to refuse a feature this CPU lacks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import dlsys  # noqa: E402
import dlsys.nn as nn  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.deploy import GUARDED_FEATURES, resolve_target, target_features  # noqa: E402
from dlsys.deploy import compile as compile_library  # noqa: E402
from dlsys.errors import ArgumentError, ShapeError  # noqa: E402
from dlsys.frontend.cli import main as cli_main  # noqa: E402
from dlsys.onnx import InferenceSession  # noqa: E402
from dlsys.onnx import export as export_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TVM_FFI_VERSION = version("apache-tvm-ffi")
# docs/deployment.md's five lines, with the paths and shapes as arguments.
LOADER = """
import sys, numpy as np, tvm_ffi
lib = tvm_ffi.load_module(sys.argv[1])
x = np.load(sys.argv[2])
y = np.empty(tuple(int(d) for d in sys.argv[4].split(",")), dtype="float32")
lib[sys.argv[3]](x, y)
np.save(sys.argv[5], y)
"""


def _mlp_onnx(path: Path) -> Path:
    """A two-layer MLP with a free batch: Gemm, Relu, Gemm."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((20, 32)) * 0.3, "b1": rng.standard_normal(32),
              "w2": rng.standard_normal((32, 5)) * 0.3, "b2": rng.standard_normal(5)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _cnn_onnx(path: Path) -> Path:
    """A LeNet-like CNN exported by dlsys.onnx.export: two conv+relu+pool, then a Linear."""
    dlsys.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 3 * 3, 10))
    export_onnx(model, (2, 1, 12, 12), path)
    return path


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> Path:
    """A new virtual environment with apache-tvm-ffi and numpy only (pip's own index and
    caches, as configured for this machine); skipped only if pip reaches no index."""
    folder = tmp_path_factory.mktemp("deploy-venv")
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q",
                           f"apache-tvm-ffi=={TVM_FFI_VERSION}", "numpy"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        if any(word in done.stderr for word in ("No matching distribution",
                                                "Could not find a version", "connection")):
            pytest.skip(f"pip reaches no package index with apache-tvm-ffi: "
                        f"{done.stderr.strip()[-300:]}")
        raise AssertionError(f"pip install failed:\n{done.stderr}")
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert not names & {"dlsys", "apache-tvm", "tvm"}, names
    return python


def _run_fresh(python: Path, tmp_path: Path, library: Path, entry: str, x: np.ndarray,
               out_shape: tuple[int, ...]) -> np.ndarray:
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    # Run away from the repository, so that nothing of dlsys can be imported by accident.
    subprocess.run([str(python), str(script), str(library), str(tmp_path / "x.npy"), entry,
                    ",".join(map(str, out_shape)), str(tmp_path / "y.npy")],
                   check=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return np.load(tmp_path / "y.npy")


def test_onnx_mlp_library_runs_in_a_fresh_venv(fresh_python, tmp_path):
    model = _mlp_onnx(tmp_path / "mlp.onnx")
    library = tmp_path / "lib" / "mlp.so"
    assert cli_main(["compile", str(model), "-o", str(library), "--input-shape", "x=4,20",
                     "--batch-sizes", "1,4"]) == 0
    assert (library.parent / "libtvm_runtime.so").exists()
    session = InferenceSession(str(model))
    x = np.random.default_rng(1).standard_normal((4, 20)).astype(np.float32)
    for entry, batch in (("run_b4", 4), ("run_b1", 1), ("run", 1)):
        got = _run_fresh(fresh_python, tmp_path, library, entry, x[:batch], (batch, 5))
        np.testing.assert_allclose(got, session.run(None, {"x": x[:batch]})[0],
                                   rtol=1e-5, atol=1e-5)


def test_onnx_cnn_library_runs_in_a_fresh_venv(fresh_python, tmp_path):
    model = _cnn_onnx(tmp_path / "cnn.onnx")
    session = InferenceSession(str(model))
    name = session.get_inputs()[0].name
    library = compile_library(model, {name: (2, 1, 12, 12)}, tmp_path / "cnn.so")
    x = np.random.default_rng(2).standard_normal((2, 1, 12, 12)).astype(np.float32)
    got = _run_fresh(fresh_python, tmp_path, library, "run", x, (2, 10))
    np.testing.assert_allclose(got, session.run(None, {name: x})[0], rtol=1e-5, atol=1e-5)


def test_module_compiled_for_a_portable_target_runs_in_process(tmp_path):
    tvm_ffi = pytest.importorskip("tvm_ffi")
    dlsys.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    assert "avx2" in target_features(resolve_target("x86-64-v3"))
    assert "avx512f" not in target_features(resolve_target("x86-64-v3"))
    library = compile_library(model, [(5, 12)], tmp_path / "module.so", target="x86-64-v3")
    if shutil.which("objdump"):  # no AVX-512 register anywhere in an AVX2 library
        code = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True,
                              check=True).stdout
        assert "ymm" in code and "zmm" not in code
    x = np.random.default_rng(4).standard_normal((5, 12)).astype(np.float32)
    got = np.empty((5, 3), np.float32)
    tvm_ffi.load_module(str(library))["run"](x, got)
    model.eval()
    node = ad.Variable("x")
    expected = ad.Executor([model(node)]).run({node: x}, convert_to_numpy_ret_vals=True)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="shape"):  # TVM's own argument check names it
        tvm_ffi.load_module(str(library))["run"](x[:4], got)


def test_library_checks_integer_ids_as_the_session_does(tmp_path):
    tvm_ffi = pytest.importorskip("tvm_ffi")
    table = np.random.default_rng(6).standard_normal((10, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])], "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [numpy_helper.from_array(table, "table")])
    model = tmp_path / "embedding.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    run = tvm_ffi.load_module(str(compile_library(model, None, tmp_path / "e.so")))["run"]
    ids, got = np.array([1, -2, 9], np.int64), np.empty((3, 4), np.float32)
    run(ids, got)
    np.testing.assert_array_equal(got, InferenceSession(str(model)).run(None, {"ids": ids})[0])
    with pytest.raises(IndexError, match=r"input ids: .*\[-10, 10\): got 10 at flat position 1"):
        run(np.array([1, 10, 2], np.int64), got)


def _missing_feature() -> str | None:
    """A feature the C check knows that this CPU lacks (read from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))
    for feature in ("avx512fp16", "amx-tile", "avx512vp2intersect"):
        if feature in GUARDED_FEATURES and feature.replace("-", "_").replace(
                "avx512fp16", "avx512_fp16") not in flags:
            return feature
    return None


def test_library_refuses_a_cpu_without_its_features(tmp_path):
    tvm_ffi = pytest.importorskip("tvm_ffi")
    feature = _missing_feature()
    if feature is None:
        pytest.skip("this CPU has every feature the test could require")
    library = compile_library(_mlp_onnx(tmp_path / "mlp.onnx"), {"x": (2, 20)},
                              tmp_path / "guarded.so", require_cpu_features=[feature])
    run = tvm_ffi.load_module(str(library))["run"]
    with pytest.raises(RuntimeError, match=f"lacks: {feature}"):
        run(np.zeros((2, 20), np.float32), np.zeros((2, 5), np.float32))


def test_cpp_example_runs_the_library(tmp_path):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to build examples/deploy/run_model.cc")
    import tvm_ffi

    ffi = Path(tvm_ffi.__file__).parent
    binary = tmp_path / "run_model"
    subprocess.run([compiler, "-std=c++17", "-O1", str(REPO / "examples/deploy/run_model.cc"),
                    f"-I{ffi / 'include'}", f"-L{ffi / 'lib'}", "-ltvm_ffi",
                    f"-Wl,-rpath,{ffi / 'lib'}", "-o", str(binary)],
                   check=True, capture_output=True, text=True, timeout=180)
    model = _mlp_onnx(tmp_path / "mlp.onnx")
    library = compile_library(model, {"x": (3, 20)}, tmp_path / "mlp.so")
    x = np.random.default_rng(5).standard_normal((3, 20)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    done = subprocess.run([str(binary), str(library), str(tmp_path / "x.bin"), "3x20", "3x5"],
                          check=True, capture_output=True, text=True, timeout=60)
    got = np.array([float(v) for v in done.stdout.split()], np.float32).reshape(3, 5)
    expected = InferenceSession(str(model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_compile_refuses_what_it_cannot_build(tmp_path):
    model = _mlp_onnx(tmp_path / "mlp.onnx")
    with pytest.raises(ShapeError, match="input 'x' has shape"):
        compile_library(model, None, tmp_path / "a.so")
    with pytest.raises(ArgumentError, match="unknown target 'not-a-cpu'"):
        compile_library(model, {"x": (1, 20)}, tmp_path / "a.so", target="not-a-cpu")
    with pytest.raises(ArgumentError, match=r"inputs are \['x'\]"):
        compile_library(model, {"y": (1, 20)}, tmp_path / "a.so")
    with pytest.raises(ArgumentError, match="batch_sizes"):
        compile_library(model, {"x": (1, 20)}, tmp_path / "a.so", batch_sizes=[0])
    assert not (tmp_path / "a.so").exists()


def test_compile_command_refuses_a_malformed_shape(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.so"),
                  "--input-shape", "x=1,a"])
    assert exit_info.value.code == 2
    assert "expected NAME=D0,D1,..." in capsys.readouterr().err
