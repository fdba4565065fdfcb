"""``$TVM_NUM_THREADS``: a sensible value is kept, anything else is replaced with a warning."""

import os
import subprocess
import sys
import textwrap

import pytest

from dlsys import kernels

PARALLEL_MATMUL = textwrap.dedent("""
    import numpy as np, tvm
    from dlsys import tvm_op as op
    # 512^3 multiply-adds: above the size from which the matmul runs on the thread pool.
    k = op.make_matrix_mul((512, 512), False, (512, 512), False, "llvm", "llvm", "mm")
    a = tvm.runtime.tensor(np.ones((512, 512), "float32"))
    out = tvm.runtime.empty((512, 512), "float32", tvm.cpu(0))
    k(a, a, out)
    import os
    print("OK", out.numpy()[0, 0], os.environ["TVM_NUM_THREADS"])
""")


def test_a_huge_thread_count_is_clamped_not_a_hang():
    env = dict(os.environ, TVM_NUM_THREADS="100000", DLSYS_DISK_CACHE="0", DLSYS_TUNE="0")
    # Before the clamp, TVM started 100000 threads at the first parallel kernel and never
    # returned; the timeout only stops such a hang from stalling the suite.
    child = subprocess.run([sys.executable, "-c", PARALLEL_MATMUL], capture_output=True,
                           text=True, env=env, timeout=300)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["OK", "512.0", str(kernels.available_cpus())]
    assert "TVM_NUM_THREADS=100000 is more than the" in child.stderr


@pytest.mark.parametrize("text", ["abc", "0", "-4", "2.5", ""])
def test_a_value_that_is_not_a_positive_integer_falls_back(text):
    with pytest.warns(RuntimeWarning, match="not a positive integer"):
        assert kernels.thread_count(text) == kernels.physical_cores()


def test_sensible_values_are_kept():
    assert kernels.thread_count(None) == kernels.physical_cores()
    assert kernels.thread_count(" 1 ") == 1
    cpus = kernels.available_cpus()
    assert kernels.thread_count(str(cpus)) == cpus
    with pytest.warns(RuntimeWarning, match="more than the"):
        assert kernels.thread_count(str(cpus + 1)) == cpus


@pytest.mark.parametrize("given, kept", [(None, "0"), ("1", "1")])
def test_the_pool_is_unpinned_unless_the_user_pins_it(given, kept):
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    if given is not None:
        env["TVM_BIND_THREADS"] = given
    child = subprocess.run([sys.executable, "-c", "import os, dlsys.kernels; "
                            "print(os.environ['TVM_BIND_THREADS'])"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == kept
