"""A batch size baked into a file, as PyTorch's default exporter writes it: the example's batch
in the inputs' shapes, in every value's recorded shape and in Reshape targets. The imported
module takes any batch; the session holds feeds to the file's batch, as onnxruntime does, and
says how to export a free one."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import helper  # noqa: E402
from onnx_testing import TOLERANCE, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.errors import ShapeError  # noqa: E402

IMAGE = (1, 28, 28)


def _flatten_gemm(batch, target: list[int], relu_first: bool = False) -> onnx.ModelProto:
    """x (batch, 1, 28, 28) -> [Relu] -> Reshape(target) -> Gemm to 10 columns. ``model``
    records every value's inferred shape, so a fixed batch is in them all, as PyTorch's
    default exporter writes them."""
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu_first else []
    nodes += [helper.make_node("Reshape", ["r" if relu_first else "x", "shape"], ["flat"],
                               name="view"),
              helper.make_node("Gemm", ["flat", "w", "b"], ["y"], transB=1)]
    return model(nodes, {"x": (batch, *IMAGE)}, {"y": None},
                 {"shape": np.array(target, np.int64), "w": normal((10, 784), 1),
                  "b": normal((10,), 2)})


def _rows(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output, one row at a time (the file's own batch of 1)."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def _module_run(source, x: np.ndarray) -> np.ndarray:
    node = ad.Variable("x")
    return ad.Executor([donnx.import_model(source)(node)]).run(
        {node: x}, convert_to_numpy_ret_vals=True)[0]


@pytest.mark.parametrize("target", [[1, 784], [1, -1], [0, 784], [0, -1]])
@pytest.mark.parametrize("relu_first", [False, True])
def test_module_of_a_fixed_batch_file_takes_any_batch(target, relu_first):
    """[1, 784] at batch 5 was 'cannot reshape (5, 1, 28, 28) to (1, 784)', [1, -1] folded
    the batch into one row of 3920; the Relu's recorded shape (1, 1, 28, 28) kept the batch
    fixed after it, whatever the target."""
    proto = _flatten_gemm(1, target, relu_first)
    x = normal((5, *IMAGE), 3)
    np.testing.assert_allclose(_module_run(proto.SerializeToString(), x), _rows(proto, x),
                               rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("target", [[1, 28, 28], [1, 28, -1], [1, -1, 28]])
def test_batch_stays_first_in_a_reshape_to_more_axes(target):
    proto = model([helper.make_node("Reshape", ["x", "shape"], ["y"])], {"x": (1, *IMAGE)},
                  {"y": None}, {"shape": np.array(target, np.int64)})
    x = normal((5, *IMAGE), 3)
    np.testing.assert_array_equal(_module_run(proto.SerializeToString(), x),
                                  x.reshape(5, 28, 28))


def test_session_of_a_fixed_batch_file_names_the_batch_and_how_to_free_it():
    data = _flatten_gemm(1, [1, -1], relu_first=True).SerializeToString()
    session = donnx.InferenceSession(data)
    assert session.fixed_batch == 1
    assert session.get_inputs()[0].shape == [1, *IMAGE]
    x = normal((1, *IMAGE))
    np.testing.assert_allclose(session.run(None, {"x": x})[0],
                               _rows(onnx.load_from_string(data), x), rtol=TOLERANCE,
                               atol=TOLERANCE)
    with pytest.raises(ShapeError) as err:
        session.run(None, {"x": normal((5, *IMAGE))})
    message = str(err.value)
    assert "\n" not in message
    assert r"takes (1, 1, 28, 28)" in message and "fixes the batch size at 1" in message
    assert "dynamic_shapes=" in message and "dynamic_axes={'x': {0: 'batch'}}" in message
    # Another mistake than the batch gets no advice about it.
    with pytest.raises(ShapeError) as err:
        session.run(None, {"x": normal((5, 1, 28, 27))})
    assert "fixes the batch" not in str(err.value)


def test_free_batch_file_with_a_baked_reshape_runs_at_any_batch():
    """A file whose input leaves the batch free but whose Reshape says [1, 784]: that target
    holds at batch 1 only, so -1 there changes no run that worked."""
    proto = _flatten_gemm("N", [1, 784])
    session = donnx.InferenceSession(proto.SerializeToString())
    assert session.fixed_batch is None
    x = normal((4, *IMAGE), 5)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], _rows(proto, x),
                               rtol=TOLERANCE, atol=TOLERANCE)


def test_reshapes_that_fold_the_batch_are_kept():
    """[1, -1] on a free batch folds it into one row (a valid model: onnxruntime runs it at
    any batch), and [2, 392] on a fixed batch of 1 is not a per-row reshape: both as
    written."""
    proto = model([helper.make_node("Reshape", ["x", "shape"], ["y"])], {"x": ("N", *IMAGE)},
                  {"y": None}, {"shape": np.array([1, -1], np.int64)})
    x = normal((3, *IMAGE))
    theirs = ort.InferenceSession(proto.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert theirs.shape == (1, 3 * 784)
    np.testing.assert_array_equal(
        donnx.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0], theirs)
    proto = model([helper.make_node("Reshape", ["x", "shape"], ["y"])], {"x": (1, *IMAGE)},
                  {"y": None}, {"shape": np.array([2, 392], np.int64)})
    assert donnx.InferenceSession(proto.SerializeToString()).run(
        None, {"x": x[:1]})[0].shape == (2, 392)


def _torch_cnn():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        """A conv, then ``x.view(x.size(0), -1)``: the batch the trace sees becomes a
        number in the Reshape."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(0)
    return torch, Net().eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore::UserWarning")
@pytest.mark.parametrize("dynamo", [True, False])
def test_pytorch_export_at_batch_one(tmp_path, dynamo):
    """Exported at the example's batch of 1, with no dynamic shapes: by the default exporter
    (dynamo=True: weights in an external file, the batch in the inputs, in every recorded
    shape and in Reshape [1, -1]) and by the TorchScript one (dynamo=False)."""
    torch, net = _torch_cnn()
    if dynamo:
        pytest.importorskip("onnxscript")
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(net, (torch.zeros(1, *IMAGE),), str(path), dynamo=dynamo,
                      input_names=["x"])
    if dynamo:  # what this test is about: the exporter still writes so
        assert [p.name for p in tmp_path.iterdir() if p.name != "cnn.onnx"] == ["cnn.onnx.data"]
    session = donnx.InferenceSession(str(path))
    assert session.fixed_batch == 1
    x = normal((6, *IMAGE), 7)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x[:1]})[0], expected[:1],
                               rtol=TOLERANCE, atol=TOLERANCE)
    with pytest.raises(ShapeError, match="fixes the batch size at 1"):
        session.run(None, {"x": x})
    np.testing.assert_allclose(_module_run(path, x), expected, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore::UserWarning")
def test_pytorch_default_export_with_a_dynamic_batch(tmp_path):
    torch, net = _torch_cnn()
    pytest.importorskip("onnxscript")
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(net, (torch.zeros(2, *IMAGE),), str(path), dynamo=True,
                      input_names=["x"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    session = donnx.InferenceSession(str(path))
    assert session.fixed_batch is None
    x = normal((5, *IMAGE), 8)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"x": x})[0],
                                   net(torch.from_numpy(x)).numpy(), rtol=TOLERANCE,
                                   atol=TOLERANCE)
