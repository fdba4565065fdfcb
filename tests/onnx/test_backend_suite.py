"""ONNX's own node test cases (``onnx.backend.test.case.node``) through dlsys's ONNX
backend: every case recorded in ``backend_expected_pass.txt`` (written by
``python -m dlsys.testing.onnx_backend --write``) must still pass, compared as ONNX's test
runner compares (shape, dtype, the case's rtol and atol). A case that newly passes is added
by running that tool again."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import dlsys.onnx as donnx
from dlsys.onnx.backend import Backend
from dlsys.testing.onnx_backend import (
    EXPECTED_PASS_FILE,
    assert_outputs_match,
    collect_cases,
    read_expected_pass,
    run_case,
)

EXPECTED_PASS = read_expected_pass()


@pytest.fixture(scope="module")
def cases() -> dict:
    """Every node case of the installed onnx package, by name (collected once: ~5 s)."""
    return {case.name: case for case in collect_cases()}


def test_every_listed_case_exists(cases):
    unknown = [name for name in EXPECTED_PASS if name not in cases]
    assert not unknown, f"{EXPECTED_PASS_FILE.name} lists cases onnx does not have: {unknown}"
    assert EXPECTED_PASS == sorted(set(EXPECTED_PASS)), "the list must be sorted, no repeats"


@pytest.mark.parametrize("name", EXPECTED_PASS)
def test_backend_case(name, cases):
    case = cases[name]
    run_case(case.model, case.data_sets, case.rtol, case.atol)


def test_backend_interface():
    """prepare/run with a list or a dict, outputs by position and by name, run_node."""
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    rep = donnx.Backend.prepare(model, "CPU")
    outputs = rep.run([x])
    np.testing.assert_array_equal(outputs[0], np.maximum(x, 0))
    np.testing.assert_array_equal(outputs["y"], outputs[0])
    np.testing.assert_array_equal(rep.run({"x": x}).y, outputs[0])
    (y,) = Backend.run_node(node, [x])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert Backend.supports_device("CPU")
    assert not Backend.supports_device("TPU")


def test_outputs_are_compared_by_shape_and_dtype():
    expected = [np.zeros((2, 3), np.float32)]
    with pytest.raises(AssertionError, match="shape"):
        assert_outputs_match(expected, [np.zeros((3, 2), np.float32)], 1e-3, 1e-7)
    with pytest.raises(AssertionError, match="dtype"):
        assert_outputs_match(expected, [np.zeros((2, 3), np.float64)], 1e-3, 1e-7)
    with pytest.raises(AssertionError):
        assert_outputs_match(expected, [np.full((2, 3), 1e-3, np.float32)], 1e-3, 1e-7)
