"""The elementwise ("injective") schedule: large loops run in parallel chunks of whole
vectors, and a per-channel operand leaves the image planes contiguous and vectorised, so no
lane divides a fused index back into a channel. Values against numpy on awkward shapes."""

import re

import numpy as np
import pytest
import tvm_ffi

from dlsys.kernels import build
from dlsys.kernels.elementwise import compute
from dlsys.kernels.registry import KernelSpec
from dlsys.testing.synthetic import misaligned

TARGET = build.make_target("llvm")


def _script(formula, shapes, out):
    inputs, outputs = compute.elementwise(formula, shapes, out, (), "float32")
    return build.scheduled_module(inputs, outputs, "injective", TARGET, "k").script()


def test_large_loops_run_whole_chunks_of_vectors_per_parallel_iteration():
    shape = (64, 32, 28, 28)
    script = _script(compute.relu, (shape,), shape)
    (parallel,) = re.findall(r"in T\.parallel\((\d+)\)", script)
    (lanes,) = re.findall(r"in T\.vectorized\((\d+)\)", script)
    assert int(parallel) * int(lanes) < int(np.prod(shape)) // 2  # several vectors each
    assert np.prod(shape) % int(lanes) == 0


def test_a_per_channel_operand_keeps_planes_contiguous():
    shape = (8, 32, 28, 28)
    script = _script(compute.mul, (shape, (32, 1, 1)), shape)
    (parallel,) = re.findall(r"in T\.parallel\((\d+)\)", script)
    assert int(parallel) == 8 * 32   # images x channels; each plane of 784 vectorised
    assert re.search(r"T\.vectorized\(", script)


@pytest.mark.parametrize("kind, shapes, out", [
    ("mul", ((256, 32, 28, 28), (32, 1, 1)), (256, 32, 28, 28)),
    ("add", ((3, 5, 7, 9), (5, 1, 1)), (3, 5, 7, 9)),
    ("add", ((999, 1001), (1001,)), (999, 1001)),
    ("mul", ((7, 1, 13), (7, 11, 13)), (7, 11, 13)),
    ("relu", ((999, 1001),), (999, 1001)),
    ("relu", ((5, 3, 1),), (5, 3, 1)),
])
def test_elementwise_kernels_match_numpy(kind, shapes, out):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype("float32") for s in shapes]
    kernel = KernelSpec(kind, (tuple(shapes), out, ())).build("llvm", "float32")
    result = build.empty(out, "float32")
    kernel(*[build.to_tensor(a) for a in arrays], result)
    expected = {"mul": lambda a, b: a * b, "add": lambda a, b: a + b,
                "relu": lambda a: np.maximum(a, 0)}[kind](*arrays)
    np.testing.assert_array_equal(result.numpy(), expected)



@pytest.mark.parametrize("kind, input_alignment", [("llvm", 4), ("cuda", 64)])
def test_cpu_kernels_promise_their_inputs_only_the_element_alignment(kind, input_alignment):
    # So that the executor can pass a caller's numpy array (16-byte aligned) where it lies;
    # outputs are always dlsys's own 64-byte-aligned buffers, and GPU inputs dlsys's copies.
    inputs, outputs = compute.elementwise(compute.add, [(64, 128), (128,)], (64, 128), (),
                                          "float32")
    func = build.scheduled_module(inputs, outputs, "injective", build.make_target(kind),
                                  "k")["k"]
    assert [p.ty.data_alignment for p in func.params] == [input_alignment] * 2 + [64]


def test_a_cpu_kernel_reads_inputs_that_start_off_a_vector_boundary():
    kernel = KernelSpec("add", (((64, 128), (64, 128)), (64, 128), ())).build("llvm", "float32")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 128)).astype("float32") for _ in range(2))
    a_off, b_off = misaligned(a, 4), misaligned(b, 16)  # one element, four elements past
    out = build.empty((64, 128))
    kernel.func(tvm_ffi.from_dlpack(a_off, require_alignment=0),
                tvm_ffi.from_dlpack(b_off, require_alignment=0), out)
    np.testing.assert_array_equal(out.numpy(), a + b)
