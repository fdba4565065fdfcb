"""Whole models through ONNX: PyTorch's exports run by dlsys against onnxruntime, dlsys models
exported and run by onnxruntime, and an imported model fine-tuned by dlsys.optim."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx_testing import TOLERANCE, normal  # noqa: E402

import dlsys  # noqa: E402
import dlsys.errors  # noqa: E402
import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys import nn, optim  # noqa: E402
from dlsys.nn import functional as F  # noqa: E402


def _torch_models():
    torch = pytest.importorskip("torch")

    class LeNet(torch.nn.Module):
        """Conv, batch norm, both pools, a flatten and dense layers."""

        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 6, 5, padding=2)
            self.bn = torch.nn.BatchNorm2d(6)
            self.conv2 = torch.nn.Conv2d(6, 16, 5)
            self.fc1 = torch.nn.Linear(16 * 5 * 5, 120)
            self.fc2 = torch.nn.Linear(120, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)
            x = torch.nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10),
                              torch.nn.LogSoftmax(dim=1))
    lenet = LeNet()
    with torch.no_grad():  # running statistics that are not the identity
        lenet.bn.running_mean.uniform_(-0.5, 0.5)
        lenet.bn.running_var.uniform_(0.5, 2.0)
    return torch, {"mlp": (mlp, (784,)), "lenet": (lenet, (1, 28, 28))}


def _export_torch(tmp_path, name: str, fold: bool = True):
    torch, models = _torch_models()
    module, shape = models[name]
    module.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(module, (torch.zeros(2, *shape),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}},
                      do_constant_folding=fold)
    return torch, module, shape, path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name,fold", [("mlp", True), ("lenet", True), ("lenet", False)])
def test_pytorch_export_matches_onnxruntime_and_torch(tmp_path, name, fold):
    """Folded, PyTorch writes LeNet's batch norm into the conv; unfolded, it stays a
    BatchNormalization node."""
    torch, module, shape, path = _export_torch(tmp_path, name, fold)
    ours = donnx.InferenceSession(str(path))
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = normal((batch, *shape), batch)
        mine = ours.run(None, {"x": x})[0]
        np.testing.assert_allclose(mine, theirs.run(None, {"x": x})[0], rtol=TOLERANCE,
                                   atol=TOLERANCE)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(mine, expected, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pytorch_linear_over_stacked_rows_exports_matmul_add(tmp_path):
    """PyTorch's default export fixes the example's batch (2): the session holds feeds to it,
    as onnxruntime does, while the imported module takes any batch (the fixed size is not
    built into the reshapes around the MatMul)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Sigmoid()).eval()
    path = tmp_path / "rows.onnx"
    torch.onnx.export(module, (torch.zeros(2, 3, 6),), str(path), dynamo=False,
                      input_names=["x"])
    import onnx

    assert "MatMul" in {n.op_type for n in onnx.load(str(path)).graph.node}
    session = donnx.InferenceSession(str(path))
    x = normal((2, 3, 6))
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"x": x})[0],
                                   module(torch.from_numpy(x)).numpy(), rtol=TOLERANCE,
                                   atol=TOLERANCE)
    with pytest.raises(dlsys.errors.ShapeError, match=r"takes \(2, 3, 6\)"):
        session.run(None, {"x": normal((5, 3, 6))})
    x_node, x = ad.Variable("x"), normal((5, 3, 6))
    ours = ad.Executor([donnx.import_model(path)(x_node)]).run(
        {x_node: x}, convert_to_numpy_ret_vals=True)[0]
    with torch.no_grad():
        np.testing.assert_allclose(ours, module(torch.from_numpy(x)).numpy(), rtol=TOLERANCE,
                                   atol=TOLERANCE)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("opset", [13, 20])
def test_pytorch_cnn_with_global_pool_rows_batch_norm_and_softmax(tmp_path, opset):
    """The rest of what PyTorch writes for CNNs: a strided conv, global average pooling,
    batch norm over rows, a permute, sigmoid and softmax, at the first and last opset."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.bn = torch.nn.BatchNorm1d(8)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            x = torch.sigmoid(self.conv(x.permute(0, 3, 1, 2)))  # NHWC images in
            x = self.bn(torch.flatten(self.pool(x), 1))
            return torch.softmax(self.fc(torch.tanh(x)), dim=1)

    module = Net().eval()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.2, 0.2)
        module.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(module, (torch.zeros(2, 10, 9, 3),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}},
                      opset_version=opset, do_constant_folding=False)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Transpose", "GlobalAveragePool", "BatchNormalization", "Softmax"} <= ops
    x = normal((5, 10, 9, 3))
    ours = donnx.InferenceSession(str(path)).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ours, theirs.run(None, {"x": x})[0], rtol=TOLERANCE,
                               atol=TOLERANCE)
    with torch.no_grad():
        np.testing.assert_allclose(ours, module(torch.from_numpy(x)).numpy(), rtol=TOLERANCE,
                                   atol=TOLERANCE)


def _dlsys_models():
    dlsys.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 8),
                        nn.Tanh(), nn.Linear(8, 5), nn.Sigmoid())
    if not hasattr(nn, "Conv2d"):
        return {"mlp": (mlp, (20,))}
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Sequential(nn.Conv2d(4, 6, 3, stride=2), nn.Tanh()),
                        nn.AvgPool2d(2, padding=1), nn.Flatten(), nn.Linear(24, 3))
    rng = np.random.default_rng(0)
    cnn[1].load_state_dict({"weight": rng.uniform(0.5, 1.5, 4), "bias": rng.normal(size=4),
                            "running_mean": rng.normal(size=4),
                            "running_var": rng.uniform(0.5, 2, 4)})
    return {"mlp": (mlp, (20,)), "cnn": (cnn, (1, 12, 12))}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_dlsys_export_runs_in_onnxruntime_with_dlsys_outputs(tmp_path, name):
    models = _dlsys_models()
    if name not in models:
        pytest.skip("dlsys.nn has no Conv2d yet")
    model, shape = models[name]
    path = tmp_path / f"{name}.onnx"
    donnx.export(model, (4, *shape), path)
    assert model.training, "export leaves the model's mode as it was"
    model.eval()
    x_node = ad.Variable("x")
    executor = ad.Executor([model(x_node)])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", *shape]
    for batch in (1, 6):  # the batch size stays free
        x = normal((batch, *shape), batch)
        ours = executor.run({x_node: x}, convert_to_numpy_ret_vals=True)[0]
        theirs = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(theirs, ours, rtol=TOLERANCE, atol=TOLERANCE)
        # ... and back into dlsys, with the layers' names on the parameters.
        again = donnx.InferenceSession(str(path)).run(None, {"input": x})[0]
        np.testing.assert_allclose(again, ours, rtol=TOLERANCE, atol=TOLERANCE)
    imported = donnx.import_model(path)
    assert set(imported.state_dict()) == set(model.state_dict()) - {
        k for k in model.state_dict() if k.endswith(".seed")}


def _fine_tune(module, x_value, labels_value, steps: int, lr: float) -> list[float]:
    x, labels = ad.Variable("x"), ad.Variable("labels")
    module.train()
    step = optim.SGD(module.parameters(), lr=lr).minimize(F.cross_entropy(module(x), labels))
    return [step({x: x_value, labels: labels_value}) for _ in range(steps)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_imported_model_fine_tunes_as_pytorch_does(tmp_path, name):
    """PyTorch's models fine-tuned for a few SGD steps on a fixed batch: the loss falls, the
    initializers move, and every step's loss is PyTorch's for the same steps (LeNet's batch
    norm on batch statistics, as PyTorch's in training mode; the MLP's dropout is gone from
    the exported graph, and its LogSoftmax is differentiated: cross-entropy of log-softmax
    outputs is that of the logits)."""
    import copy

    torch, models = _torch_models()
    module, shape = models[name]
    reference = copy.deepcopy(module)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(module.eval(), (torch.zeros(2, *shape),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}},
                      do_constant_folding=False)
    imported = donnx.import_model(path)
    names = {n for n, _ in module.named_parameters()}
    assert {n for n, _ in imported.named_parameters()} == names
    before = imported.state_dict()
    x = normal((16, *shape), 3)
    labels = np.random.default_rng(4).integers(0, 10, 16)
    losses = _fine_tune(imported, x, labels.astype(np.float32), 8, lr=0.1)
    assert losses[-1] < losses[0] * 0.9, losses
    after = imported.state_dict()
    # A bias added just before batch norm on batch statistics is subtracted again with the
    # channel's mean: its gradient is exactly zero, and with sums accumulated in float64 it
    # comes out (nearly) so; float32 rounding used to move it by noise. It must not drift.
    flat = {"conv1.bias"} if name == "lenet" else set()
    for n in flat:
        np.testing.assert_allclose(after[n], before[n], rtol=0, atol=1e-6)
    assert all(not np.array_equal(before[n], after[n]) for n in names - flat)
    if name == "lenet":  # batch statistics were used and blended into the buffers
        assert not np.array_equal(before["bn.running_mean"], after["bn.running_mean"])

    # Exported again, fine-tuned: onnxruntime computes what the module now computes.
    tuned = tmp_path / f"{name}_tuned.onnx"
    donnx.export(imported, (2, *shape), tuned)
    imported.eval()
    x_node = ad.Variable("x")
    ours = ad.Executor([imported(x_node)]).run({x_node: x}, convert_to_numpy_ret_vals=True)[0]
    theirs = ort.InferenceSession(str(tuned), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(theirs.run(None, {"x": x})[0], ours, rtol=TOLERANCE,
                               atol=TOLERANCE)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not np.allclose(original.run(None, {"x": x})[0], ours, atol=TOLERANCE)

    reference.train(name == "lenet")
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    expected = []
    for _ in range(8):
        sgd.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)),
                                                 torch.from_numpy(labels))
        loss.backward()
        sgd.step()
        expected.append(loss.item())
    np.testing.assert_allclose(losses, expected, rtol=1e-4)


def test_session_packs_its_weights_once_and_sees_them_change(tmp_path):
    """The initializers are the session's constants: their matmul layouts are made once per
    compiled shape, and fine-tuning ``session.model`` reaches the next run."""
    dlsys.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(40, 36), nn.ReLU(), nn.Linear(36, 10))
    path = tmp_path / "mlp.onnx"
    donnx.export(mlp, (1, 40), path)
    session = donnx.InferenceSession(str(path))
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = normal((64, 40), 1)
    ours = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(ours, reference.run(None, {"input": x})[0], rtol=TOLERANCE,
                               atol=TOLERANCE)
    (executor,) = session._executors.values()
    rows = [name for name, *_ in executor.storage_table()]
    assert sum(name.startswith("PackPanels") for name in rows) == 2, rows

    labels = np.random.default_rng(2).integers(0, 10, 64).astype(np.float32)
    _fine_tune(session.model, x, labels, 3, lr=0.1)
    session.model.eval()
    x_node = ad.Variable("x")
    tuned = ad.Executor([session.model(x_node)]).run({x_node: x},
                                                     convert_to_numpy_ret_vals=True)[0]
    assert not np.allclose(tuned, ours)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], tuned, rtol=TOLERANCE,
                               atol=TOLERANCE)


def test_size_one_initializers_are_trained_and_exported(tmp_path):
    """PyTorch's ``Linear(n, 1)`` bias is a (1,) initializer and a learned temperature a
    0-d one: both are parameters like any other initializer, one SGD step moves them as
    numpy computes it, and export writes their new values back in the file's shapes."""
    import onnx
    from onnx import helper
    from onnx_testing import model

    rng = np.random.default_rng(5)
    w, b = normal((1, 6), 1), normal((1,), 2)
    t = np.asarray(1.5, dtype=np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1),
             helper.make_node("Mul", ["z", "t"], ["y"])]
    proto = model(nodes, {"x": ("N", 6)}, {"y": ("N", 1)}, {"w": w, "b": b, "t": t})
    imported = donnx.import_model(proto)
    assert {n for n, _ in imported.named_parameters()} == {"w", "b", "t"}

    x_value, target_value = normal((8, 6), 3), rng.normal(size=(8, 1)).astype(np.float32)
    x, target = ad.Variable("x"), ad.Variable("target")
    imported.train()
    step = optim.SGD(imported.parameters(), lr=0.1).minimize(
        F.mse_loss(imported(x), target))
    step({x: x_value, target: target_value})

    z = x_value.astype(np.float64) @ w.T + b
    grad_y = 2 * (z * t - target_value) / z.size  # d mean((y - target)^2) / dy
    expected = {"w": w - 0.1 * (grad_y * t).T @ x_value, "b": b - 0.1 * (grad_y * t).sum(0),
                "t": t - 0.1 * (grad_y * z).sum()}
    state = imported.state_dict()
    for name, value in expected.items():
        np.testing.assert_allclose(state[name].reshape(np.shape(value)), value, rtol=1e-5)

    path = tmp_path / "tuned.onnx"
    donnx.export(imported, (2, 6), path)
    written = {i.name: onnx.numpy_helper.to_array(i)
               for i in onnx.load(str(path)).graph.initializer}
    for name, value in expected.items():
        assert written[name].shape == np.shape(value)
        np.testing.assert_allclose(written[name], value, rtol=1e-5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x_value})[0],
                               (x_value @ expected["w"].T + expected["b"]) * expected["t"],
                               rtol=TOLERANCE, atol=TOLERANCE)


def test_tensors_pytorch_folded_stay_fixed_while_training(tmp_path):
    """A file from PyTorch's dynamo exporter records which initializers were the module's
    parameters (``reader.TORCH_INPUT_KIND_KEY``); the others it computed itself (a mask,
    a GELU's constant, a transposed weight). Only the parameters train: the folded values
    are buffers that an SGD step leaves as they are, and ``train()`` names them. The same
    graph without the record trains every float initializer."""
    from onnx import helper
    from onnx_testing import model

    from dlsys.onnx.reader import TORCH_INPUT_KIND_KEY

    w, c, d = normal((6, 4), 1), normal((4,), 2), np.asarray(0.5, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]),
             helper.make_node("Add", ["z", "c"], ["u"]),
             helper.make_node("Mul", ["u", "d"], ["y"])]
    plain = model(nodes, {"x": ("N", 6)}, {"y": ("N", 4)}, {"w": w, "c": c, "d": d})
    assert {n for n, _ in donnx.import_model(plain).named_parameters()} == {"w", "c", "d"}

    recorded = model(nodes, {"x": ("N", 6)}, {"y": ("N", 4)}, {"w": w, "c": c, "d": d})
    for name, kind in (("w", "PARAMETER"), ("d", "CONSTANT_TENSOR")):
        info = recorded.graph.value_info.add()
        info.name = name
        info.metadata_props.add(key=TORCH_INPUT_KIND_KEY, value=kind)
    imported = donnx.import_model(recorded)
    assert [n for n, _ in imported.named_parameters()] == ["w"]
    assert imported.folded == ["c"]  # "d" is PyTorch's constant, not one it folded
    with pytest.warns(UserWarning, match=r"folded 1 tensor\(s\) into fixed values \(c\)"):
        imported.train()

    x_value = normal((8, 6), 3)
    x, target = ad.Variable("x"), ad.Variable("target")
    step = optim.SGD(imported.parameters(), lr=0.1).minimize(
        F.mse_loss(imported(x), target))
    step({x: x_value, target: normal((8, 4), 4)})
    state = imported.state_dict()
    assert not np.allclose(state["w"], w)
    np.testing.assert_array_equal(state["c"], c)
    np.testing.assert_array_equal(state["d"].reshape(()), d)


def test_session_keeps_only_the_kernels_its_live_plans_run(tmp_path, monkeypatch):
    """A session cycling through more batch sizes than it keeps plans for releases the
    kernels of the plans it dropped; a dropped session releases all of its kernels."""
    import gc

    from dlsys.kernels import build
    from dlsys.onnx import session as session_module

    monkeypatch.setattr(session_module, "MAX_PLANS", 2)
    dlsys.manual_seed(0)
    path = tmp_path / "mlp.onnx"
    donnx.export(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)), (1, 12), path)
    session = donnx.InferenceSession(str(path))
    build.clear_memory_cache()
    for batch in range(1, 9):
        session.run(None, {"input": normal((batch, 12))})
    gc.collect()
    build.release_unused_kernels()
    live_calls = sum(e.kernel_calls for e in session._executors.values())
    assert len(session._executors) == 2
    assert 0 < len(build._memory_cache) <= live_calls
    del session
    gc.collect()
    build.release_unused_kernels()
    assert not build._memory_cache
