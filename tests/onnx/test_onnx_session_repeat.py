"""A session's repeated runs (``InferenceSession``'s fast path for a serving loop): each run
sees its own values, and anything that differs from the last run (a shape, a dtype, an
output subset, a weight changed through the model) gets the full path's answer."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_testing import model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys.errors import DtypeError  # noqa: E402


@pytest.fixture(scope="module")
def affine():
    weight, bias = normal((6, 4), seed=1), normal((4,), seed=2)
    proto = model([helper.make_node("MatMul", ["x", "w"], ["xw"]),
                   helper.make_node("Add", ["xw", "b"], ["y"]),
                   helper.make_node("Relu", ["y"], ["z"])],
                  {"x": [None, 6]}, {"y": [None, 4], "z": [None, 4]},
                  {"w": weight, "b": bias})
    return proto.SerializeToString()


def _reference(proto_bytes, x):
    return ort.InferenceSession(proto_bytes, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


def test_repeated_runs_see_their_own_values_shapes_and_outputs(affine):
    session = donnx.InferenceSession(affine)
    for step in range(5):
        x = normal((3, 6), seed=10 + step)
        for ours, theirs in zip(session.run(None, {"x": x}), _reference(affine, x)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert session._repeat is not None
    # Another batch, a subset of the outputs, float64 refused as at the first run.
    x = normal((5, 6), seed=3)
    (z,) = session.run(["z"], {"x": x})
    np.testing.assert_allclose(z, _reference(affine, x)[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(DtypeError, match="float64"):
        session.run(None, {"x": x.astype(np.float64)})
    # The returned arrays are the caller's: the next run does not overwrite them.
    first = session.run(None, {"x": x})
    kept = [a.copy() for a in first]
    session.run(None, {"x": -x})
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


def test_a_weight_changed_through_the_model_reaches_the_next_repeated_run(affine):
    session = donnx.InferenceSession(affine)
    x = normal((2, 6), seed=4)
    for _ in range(3):
        session.run(None, {"x": x})
    weight = next(p for p in session.model.parameters() if p.shape == (6, 4))
    weight.assign(np.zeros((6, 4), np.float32))
    y, _ = session.run(None, {"x": x})
    bias = next(p for p in session.model.parameters() if p.shape == (4,)).numpy()
    np.testing.assert_allclose(y, np.broadcast_to(bias, (2, 4)), rtol=1e-6)
