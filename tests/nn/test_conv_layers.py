"""Conv2d, MaxPool2d and AvgPool2d layers: PyTorch's names, shapes and default
initialisation, forward values against torch.nn.functional (numpy where torch is missing),
model files, bad arguments, and a LeNet-5 forward and backward pass against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import dlsys
from dlsys import autodiff as ad
from dlsys import nn
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.nn import functional as F
from dlsys.ops.conv import windows

try:
    import torch
except ImportError:  # the numpy references below stand in
    torch = None


def _run(model, images, dtype="float32"):
    x = ad.Variable("x")
    return ad.Executor([model(x)], dtype=dtype).run({x: images},
                                                    convert_to_numpy_ret_vals=True)[0]


def _pair(value):
    """An int or (h, w) size as the pair the numpy references take."""
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv_reference(x, weight, bias, stride, padding):
    if torch is not None:
        return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight),
                                          torch.from_numpy(bias), stride, padding).numpy()
    out = np.einsum("bchwij,ocij->bohw",
                    windows(x, weight.shape[2:], _pair(stride), _pair(padding)), weight)
    return out + bias.reshape(1, -1, 1, 1)


def _pool_reference(x, kind, kernel, stride, padding):
    if torch is not None:
        pool = getattr(torch.nn.functional, f"{kind}_pool2d")
        return pool(torch.from_numpy(x), kernel, stride, padding).numpy()
    value = -np.inf if kind == "max" else 0.0
    view = windows(x, _pair(kernel), _pair(stride), _pair(padding), value)
    return view.max(axis=(-2, -1)) if kind == "max" else view.mean(axis=(-2, -1))


def test_conv2d_names_shapes_and_default_initialisation():
    dlsys.manual_seed(0)
    layer = nn.Conv2d(16, 32, 3)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (32, 16, 3, 3) and layer.bias.shape == (32,)
    bound = 1 / np.sqrt(16 * 3 * 3)  # PyTorch's kaiming_uniform(a=sqrt(5)) and bias bound
    for param in (layer.weight, layer.bias):
        values = np.abs(param.numpy())
        assert values.max() <= bound and values.max() > 0.9 * bound, param.name
    assert nn.Conv2d(3, 6, (5, 3), bias=False).parameters()[0].shape == (6, 3, 5, 3)
    assert nn.Conv2d(3, 6, 5, bias=False).bias is None


@pytest.mark.parametrize("kernel, stride, padding", [(5, 1, 2), (3, 2, 1), ((3, 2), (2, 1),
                                                                           (0, 1))])
def test_conv2d_forward_matches_reference(kernel, stride, padding):
    dlsys.manual_seed(1)
    layer = nn.Conv2d(3, 4, kernel, stride, padding)
    images = np.random.default_rng(0).normal(size=(2, 3, 9, 7)).astype(np.float32)
    want = _conv_reference(images, layer.weight.numpy(), layer.bias.numpy(), stride, padding)
    np.testing.assert_allclose(_run(layer, images), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer, kind, kernel, stride, padding", [
    (nn.MaxPool2d(2), "max", 2, 2, 0),
    (nn.MaxPool2d(3, 2, 1), "max", 3, 2, 1),
    (nn.AvgPool2d((3, 2), stride=(1, 2), padding=(1, 0)), "avg", (3, 2), (1, 2), (1, 0)),
    (nn.AvgPool2d(2), "avg", 2, 2, 0),
])
def test_pool_forward_matches_reference(layer, kind, kernel, stride, padding):
    images = np.random.default_rng(2).normal(size=(2, 3, 9, 7)).astype(np.float32)
    want = _pool_reference(images, kind, kernel, stride, padding)
    np.testing.assert_allclose(_run(layer, images), want, rtol=1e-5, atol=1e-6)


def test_model_file_round_trip(tmp_path):
    dlsys.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 5, 3, stride=2, bias=False), nn.AvgPool2d(3, 1, 1),
                          nn.Flatten(), nn.Linear(5 * 3 * 3, 3))
    path = dlsys.save(model, tmp_path / "cnn.npz")
    loaded = dlsys.load(path)
    assert repr(loaded) == repr(model)
    assert list(loaded.state_dict()) == ["0.weight", "0.bias", "3.weight", "6.weight", "6.bias"]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    images = np.random.default_rng(3).normal(size=(2, 1, 14, 15)).astype(np.float32)
    np.testing.assert_array_equal(_run(loaded, images), _run(model, images))


@pytest.mark.parametrize("make, error, text", [
    (lambda: nn.Conv2d(3, 6, 0), ShapeError, "Conv2d: kernel_size must be positive"),
    (lambda: nn.Conv2d(3, 6, 3, stride=0), ShapeError, "Conv2d: stride must be positive"),
    (lambda: nn.Conv2d(3, 6, 3, padding=-1), ShapeError, "padding must be non-negative"),
    (lambda: nn.Conv2d(3, 6, 3.0), ArgumentTypeError, "kernel_size"),
    (lambda: nn.Conv2d(0, 6, 3), Exception, "in_channels"),
    (lambda: nn.MaxPool2d(2, stride=0), ShapeError, "MaxPool2d: stride must be positive"),
    (lambda: nn.AvgPool2d(2, padding=-1), ShapeError, "AvgPool2d: padding"),
])
def test_bad_arguments_are_named_errors(make, error, text):
    with pytest.raises(error, match=text) as caught:
        make()
    assert isinstance(caught.value, dlsys.errors.DlsysError)


def test_channel_mismatch_names_the_layer_input():
    layer = nn.Conv2d(3, 6, 3)
    with pytest.raises(ShapeError, match=r"Conv2d\(x, weight\).*4 channels"):
        _run(layer, np.ones((1, 4, 8, 8), np.float32))


def lenet() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def test_lenet_forward_and_backward_match_pytorch():
    if torch is None:
        pytest.skip("torch is not installed")
    dlsys.manual_seed(3)
    model = lenet()
    x, labels = ad.Variable("x"), ad.Variable("labels")
    loss = F.cross_entropy(model(x), labels)
    params = model.parameters()
    rng = np.random.default_rng(4)
    images = rng.normal(size=(8, 1, 28, 28)).astype(np.float32)
    classes = rng.integers(0, 10, 8)
    got_loss, *got_grads = ad.Executor([loss, *ad.gradients(loss, params)]).run(
        {x: images, labels: classes.astype(np.float32)}, convert_to_numpy_ret_vals=True)

    reference = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10))
    # The same weights through the state dict alone: the names and shapes agree.
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    want_loss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(images)),
                                                  torch.from_numpy(classes))
    want_loss.backward()
    np.testing.assert_allclose(got_loss[0], want_loss.item(), rtol=1e-5)
    want_grads = dict(reference.named_parameters())
    for (name, _), got in zip(model.named_parameters(), got_grads):
        want = want_grads[name].grad.numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max(),
                                   err_msg=name)
