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
from dlsys.errors import DtypeError, FeedError  # noqa: E402


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


def test_a_repeated_run_fed_otherwise_gets_the_full_paths_answer(affine):
    """Once runs repeat, the fast path hands the feeds to the executor's repeated run, which
    checks them against its plan: a wrong name, no array, a list, a strided or a
    read-only array of the same shape are each answered as the first run answers them."""
    session = donnx.InferenceSession(affine)
    x = normal((3, 6), seed=5)
    for _ in range(3):
        session.run(None, {"x": x})
    assert session._repeat is not None
    with pytest.raises(FeedError, match=r"missing \['x'\].*unknown \['y'\]"):
        session.run(None, {"y": x})
    for not_an_array in (None, x.tolist()):
        with pytest.raises(FeedError, match="must be a numpy array"):
            session.run(None, {"x": not_an_array})
    wide = normal((3, 12), seed=6)
    read_only = normal((3, 6), seed=7)
    read_only.flags.writeable = False
    for fed in (wide[:, ::2], read_only, x):
        expected = _reference(affine, np.ascontiguousarray(fed))
        for ours, theirs in zip(session.run(None, {"x": fed}), expected):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
