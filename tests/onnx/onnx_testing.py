"""Helpers of the ONNX tests: one-node models built with onnx.helper, run by dlsys and by
onnxruntime, the reference."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import dlsys.onnx as donnx

TOLERANCE = 1e-4
# The IR version onnxruntime reads for each opset tested (onnx's newest is ahead of it).
IR_VERSION = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9}


def model(nodes, inputs: dict, outputs: dict, initializers: dict | None = None,
          opset: int = 17) -> onnx.ModelProto:
    """A model of ``nodes`` with float inputs and outputs ``name -> shape`` (None: a
    dimension left symbolic) and float32 or int64 ``initializers``."""
    def value(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        nodes, "test", [value(n, s) for n, s in inputs.items()],
        [value(n, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_VERSION[opset])
    # Outputs given no shape get the one ONNX's shape inference finds: the checker wants
    # every graph output to declare one.
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return proto


def run_both(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """(dlsys's outputs, onnxruntime's outputs) of ``proto`` for ``feeds``."""
    data = proto.SerializeToString()
    ours = donnx.InferenceSession(data).run(None, feeds)
    theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    return ours, theirs


def assert_matches_onnxruntime(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    ours, theirs = run_both(proto, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE)


def normal(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@functools.cache
def passing_backend_cases() -> dict:
    """ONNX's own node cases that dlsys passes (``backend_expected_pass.txt``), by name:
    valid models of every op type they cover, for tests that need one of each."""
    from dlsys.testing.onnx_backend import collect_cases, read_expected_pass

    names = set(read_expected_pass())
    return {case.name: case for case in collect_cases() if case.name in names}


def single_node_backend_case(op_type: str):
    """A passing backend case whose graph is one ``op_type`` node reading float32 inputs of
    static shapes, or None."""
    for name in sorted(passing_backend_cases()):
        case = passing_backend_cases()[name]
        graph = case.model.graph
        if len(graph.node) != 1 or graph.node[0].op_type != op_type or not graph.input:
            continue
        first = graph.input[0].type.tensor_type
        if first.elem_type == TensorProto.FLOAT and all(d.dim_value for d in first.shape.dim):
            return case
    return None
