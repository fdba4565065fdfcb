"""Batch normalisation: training statistics, running averages updated in place as PyTorch
does, inference with the running statistics, gradients, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.ops.norm import batchnorm2d_op


def _layer(channels=3, momentum=0.1):
    layer = nn.BatchNorm2d(channels, momentum=momentum)
    rng = np.random.default_rng(0)
    layer.weight.assign(rng.uniform(0.5, 1.5, channels))
    layer.bias.assign(rng.normal(size=channels))
    return layer


def test_training_normalises_and_updates_the_running_statistics():
    layer = _layer()
    x = ad.Variable("x")
    executor = ad.Executor([layer(x)])
    values = np.random.default_rng(1).normal(2.0, 3.0, size=(4, 3, 5, 7)).astype(np.float32)
    (out,) = executor.run({x: values}, convert_to_numpy_ret_vals=True)
    mean = values.mean(axis=(0, 2, 3), keepdims=True)
    var = values.var(axis=(0, 2, 3), keepdims=True)
    gamma, beta = (p.numpy().reshape(1, -1, 1, 1) for p in (layer.weight, layer.bias))
    np.testing.assert_allclose(out, (values - mean) / np.sqrt(var + 1e-5) * gamma + beta,
                               rtol=1e-4, atol=1e-5)
    unbiased = values.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.1 * mean.ravel(), rtol=1e-5)
    np.testing.assert_allclose(layer.running_var.numpy(), 0.9 + 0.1 * unbiased, rtol=1e-5)
    executor.run({x: values})  # a second step blends again
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.19 * mean.ravel(), rtol=1e-5)


ONNX_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _training_steps(executor, x, state, momentum: float, steps: int = 2) -> None:
    """Run ``steps`` training steps and check each output and the running statistics
    against PyTorch's rule, computed in float64: running = (1 - momentum) * running +
    momentum * batch statistic, the variance unbiased. ``state()`` reads the layer's
    weight, bias, running_mean and running_var as they are now."""
    start = state()
    running = [start[name].astype(np.float64) for name in ("running_mean", "running_var")]
    channel = (1, -1, 1, 1)
    gamma, beta = (start[name].reshape(channel) for name in ("weight", "bias"))
    rng = np.random.default_rng(5)
    for _ in range(steps):
        values = rng.normal(1.0, 2.0, size=(4, 3, 5, 7)).astype(np.float32)
        (out,) = executor.run({x: values}, convert_to_numpy_ret_vals=True)
        mean = values.mean(axis=(0, 2, 3), dtype=np.float64)
        var = values.var(axis=(0, 2, 3), dtype=np.float64)
        expected = (values - mean.reshape(channel)) / np.sqrt(var.reshape(channel) + 1e-5)
        np.testing.assert_allclose(out, expected * gamma + beta, rtol=1e-4, atol=1e-5)
        batch = [mean, values.var(axis=(0, 2, 3), ddof=1, dtype=np.float64)]
        running = [(1 - momentum) * r + momentum * b for r, b in zip(running, batch)]
        now = state()
        for name, want in zip(("running_mean", "running_var"), running):
            np.testing.assert_allclose(now[name], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.3, 1.0])
def test_every_momentum_trains_as_pytorch_does(momentum):
    """PyTorch accepts momentum 0 (the running statistics stay) and 1 (they are the last
    batch's). At 0 TE simplified the batch statistic out of the running update's kernel,
    whose schedule then found no NCHW block to read the plane from and failed to build."""
    layer = _layer(momentum=momentum)
    layer.running_mean.assign([0.5, -1.0, 2.0])
    layer.running_var.assign([4.0, 0.25, 1.0])
    x = ad.Variable("x")
    _training_steps(ad.Executor([layer(x)]), x, layer.state_dict, momentum)


def test_onnx_batch_norm_with_momentum_one_trains():
    """ONNX weighs the running statistic by its momentum: 1.0 is PyTorch's 0.0."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    import dlsys.onnx as donnx

    inits = {"scale": [0.5, 1.0, 1.5], "bias": [0.1, -0.2, 0.3], "mean": [0.5, -1.0, 2.0],
             "var": [4.0, 0.25, 1.0]}
    node = helper.make_node("BatchNormalization", ["x", *inits], ["y"], momentum=1.0)
    value = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 5, 7])
             for n in ("x", "y")}
    graph = helper.make_graph([node], "bn", [value["x"]], [value["y"]],
                              [numpy_helper.from_array(np.array(a, np.float32), n)
                               for n, a in inits.items()])
    module = donnx.import_model(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)).train()
    x = ad.Variable("x")
    _training_steps(ad.Executor([module(x)]), x,
                    lambda: {ONNX_NAMES[k]: v for k, v in module.state_dict().items()}, 0.0)


def test_eval_mode_uses_the_running_statistics():
    layer = _layer()
    layer.running_mean.assign([0.5, -1.0, 2.0])
    layer.running_var.assign([4.0, 0.25, 1.0])
    layer.eval()
    x = ad.Variable("x")
    values = np.random.default_rng(2).normal(size=(2, 3, 4, 4)).astype(np.float32)
    (out,) = ad.Executor([layer(x)]).run({x: values}, convert_to_numpy_ret_vals=True)
    channel = (1, -1, 1, 1)
    expected = ((values - layer.running_mean.numpy().reshape(channel))
                / np.sqrt(layer.running_var.numpy().reshape(channel) + 1e-5)
                * layer.weight.numpy().reshape(channel) + layer.bias.numpy().reshape(channel))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert layer.running_mean.numpy().tolist() == [0.5, -1.0, 2.0]  # eval never updates


def test_matches_pytorch_forward_backward_and_running_statistics():
    torch = pytest.importorskip("torch")
    layer = _layer(4)
    x, weight = ad.Variable("x"), ad.Variable("w")
    out = layer(x)
    grads = ad.gradients(out * weight, [x, layer.weight, layer.bias])
    rng = np.random.default_rng(3)
    values = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    upstream = rng.normal(size=values.shape).astype(np.float32)
    torch_layer = torch.nn.BatchNorm2d(4)
    torch_layer.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()},
                                strict=False)
    got = ad.Executor([out, *grads]).run({x: values, weight: upstream},
                                         convert_to_numpy_ret_vals=True)
    xt = torch.tensor(values, requires_grad=True)
    yt = torch_layer(xt)
    (yt * torch.tensor(upstream)).sum().backward()
    want = [yt.detach(), xt.grad, torch_layer.weight.grad, torch_layer.bias.grad]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(layer.state_dict()[name],
                                   torch_layer.state_dict()[name].numpy(), rtol=1e-5)


def test_state_dict_and_model_files_keep_the_buffers(tmp_path):
    import dlsys

    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    model[0].running_var.assign([1.0, 2.0, 3.0])
    assert list(model.state_dict()) == ["0.weight", "0.bias", "0.running_mean",
                                        "0.running_var"]
    assert len(model.parameters()) == 2  # buffers are not trained
    dlsys.save(model, tmp_path / "bn.npz")
    assert dlsys.load(tmp_path / "bn.npz").state_dict()["0.running_var"].tolist() == [1, 2, 3]


def test_bad_input():
    x = ad.Variable("x")
    layer = nn.BatchNorm2d(3)
    with pytest.raises(ShapeError, match="NCHW"):
        ad.Executor([layer(x)]).run({x: np.ones((2, 3))})
    with pytest.raises(ShapeError, match=r"\(4,\)"):
        ad.Executor([layer(x)]).run({x: np.ones((2, 4, 3, 3))})
    with pytest.raises(ArgumentError):
        nn.BatchNorm2d(3, momentum=2)
    with pytest.raises(ArgumentTypeError, match="parameter or buffer"):
        stats = [ad.Variable(n) for n in ("g", "b", "m", "v")]
        ad.Executor([batchnorm2d_op(x, *stats)]).run(
            {x: np.ones((2, 3, 2, 2)), **{s: np.ones(3) for s in stats}})
