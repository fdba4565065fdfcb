"""PyTorch's cross-entropy: integer class indices (ignored rows, label smoothing),
probability rows, and its gradient, against torch in float64."""

import numpy as np
import pytest
import torch

import dlsys.autodiff as ad
from dlsys.errors import ArgumentError, ArgumentTypeError, FeedError
from dlsys.nn import functional as F


def _run(target_values, ignore_index=-100, smoothing=0.0, logits_values=None, fuse=True):
    logits, target = ad.Variable("logits"), ad.Variable("target")
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing)
    executor = ad.Executor([loss, *ad.gradients(loss, [logits])], dtype="float64", fuse=fuse)
    if logits_values is None:
        logits_values = np.random.default_rng(0).standard_normal((len(target_values), 7))
    got = executor.run({logits: logits_values, target: target_values},
                       convert_to_numpy_ret_vals=True)
    return got, executor, logits_values


def _torch(logits_values, target_values, **kwargs):
    logits = torch.tensor(logits_values, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(target_values), **kwargs)
    loss.backward()
    return loss.item(), logits.grad.numpy()


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("ignore_index", [-100, 3])
@pytest.mark.parametrize("fuse", [True, False])
def test_class_indices_match_pytorch(dtype, smoothing, ignore_index, fuse):
    target = np.random.default_rng(1).integers(0, 7, 13)
    target[[2, 9]] = ignore_index
    (loss, grad), _, logits = _run(target.astype(dtype), ignore_index, smoothing, fuse=fuse)
    want_loss, want_grad = _torch(logits, target.astype(np.int64), ignore_index=ignore_index,
                                  label_smoothing=smoothing)
    np.testing.assert_allclose(loss[0], want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_rows_match_pytorch(smoothing):
    rows = np.random.default_rng(2).dirichlet(np.ones(7), 5)
    (loss, grad), _, logits = _run(rows, smoothing=smoothing)
    want_loss, want_grad = _torch(logits, rows, label_smoothing=smoothing)
    np.testing.assert_allclose(loss[0], want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15)


def test_loss_and_gradient_share_one_kernel():
    _, executor, _ = _run(np.array([0, 1, 2]))
    kinds = [s.kernel.kind for s in executor.program().steps if s.kernel is not None]
    assert "cross_entropy_with_gradient" in kinds and "cross_entropy" not in kinds


def test_every_row_ignored_gives_nan_as_pytorch():
    (loss, grad), _, logits = _run(np.array([-100, -100]))
    want_loss, want_grad = _torch(logits, np.array([-100, -100]))
    assert np.isnan(loss[0]) and np.isnan(want_loss)
    np.testing.assert_array_equal(grad, want_grad)  # zeros: no row counts


def test_masked_classes_keep_the_loss_and_gradient_finite():
    logits = np.random.default_rng(3).standard_normal((3, 7))
    logits[0, 1] = logits[2, :6] = -np.inf
    (loss, grad), _, _ = _run(np.array([0, 4, 6]), logits_values=logits)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    want_loss, want_grad = _torch(logits, np.array([0, 4, 6]))
    np.testing.assert_allclose(loss[0], want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15)


def test_targets_out_of_range_are_refused_where_fed_and_ignore_index_is_not():
    with pytest.raises(FeedError, match=r"id 7 at \(1,\) is out of range for CrossEntropy"
                                        r".* in \[0, 7\) or -100"):
        _run(np.array([0, 7, 1]))
    _run(np.array([0, -100, 1]))  # the ignored index itself is fine


@pytest.mark.parametrize("kwargs, error", [
    ({"label_smoothing": 1.5}, ArgumentError), ({"label_smoothing": "x"}, ArgumentTypeError),
    ({"ignore_index": 1.0}, ArgumentTypeError), ({"ignore_index": True}, ArgumentTypeError)])
def test_bad_arguments_are_named(kwargs, error):
    with pytest.raises(error, match="cross_entropy"):
        F.cross_entropy(ad.Variable("logits"), ad.Variable("target"), **kwargs)
