"""Gradient clipping by global norm inside the fused update (``max_grad_norm``): against the
formula of ``torch.nn.utils.clip_grad_norm_`` for every optimiser, against PyTorch itself
(an MLP trained by AdamW), through ``minimize``, ``TrainStep`` and ``DistributedStep`` (one
process, and two MPI ranks), and the arguments and losses a step refuses."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optim_reference as ref
import pytest

from dlsys import autodiff as ad
from dlsys import nn
from dlsys.distributed import DistributedStep
from dlsys.errors import ArgumentError, ArgumentTypeError, TrainingError
from dlsys.nn import functional as F
from dlsys.optim import SGD, Adam, AdamW, TrainStep

OPTIMISERS = {
    "sgd": (lambda p: SGD(p, 0.1), lambda params, grads: ref.sgd(params, grads, [0.1] * 4)),
    "momentum": (lambda p: SGD(p, 0.1, momentum=0.9, weight_decay=0.01),
                 lambda params, grads: ref.sgd(params, grads, [0.1] * 4, momentum=0.9,
                                               weight_decay=0.01)),
    "adam": (lambda p: Adam(p, lr=0.01, weight_decay=0.1),
             lambda params, grads: ref.adam(params, grads, [0.01] * 4, weight_decay=0.1)),
    "adamw": (lambda p: AdamW(p, lr=0.01),
              lambda params, grads: ref.adam(params, grads, [0.01] * 4, weight_decay=0.01,
                                             decoupled=True)),
}


def clipped(grads, max_norm):
    """``clip_grad_norm_``'s formula in numpy: the gradients scaled, and the norm."""
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    factor = np.float32(min(1.0, max_norm / (norm + 1e-6)))
    return [g * factor for g in grads], norm


@pytest.mark.parametrize("name", OPTIMISERS)
@pytest.mark.parametrize("max_norm", [2.0, 1e3], ids=["active", "inactive"])
def test_step_clips_as_clip_grad_norm(name, max_norm):
    make, reference = OPTIMISERS[name]
    params, grads = ref.random_problem(4)
    optimizer = make(ref.tensors(params))
    expected_grads, norms = zip(*(clipped(g, max_norm) for g in grads))
    assert (max(norms) > max_norm) == (max_norm < 100)  # the clip acts only where meant to
    for step_grads, norm in zip(grads, norms):
        tensors = ref.tensors(step_grads)
        optimizer.step(tensors, max_grad_norm=max_norm)
        assert optimizer.last_grad_norm == pytest.approx(norm, rel=1e-12)
        for tensor, array in zip(tensors, step_grads):  # read, never written
            np.testing.assert_array_equal(tensor.numpy(), array)
    want = reference(params, list(expected_grads))[-1]
    for got, expected in zip(optimizer.params, want):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_float64_parameters_clip_in_float64():
    params, grads = ref.random_problem(3, dtype=np.float64)
    optimizer = AdamW(ref.tensors(params), lr=0.01)
    expected = []
    for step_grads in grads:
        optimizer.step(ref.tensors(step_grads), max_grad_norm=2.0)
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in step_grads))
        assert optimizer.last_grad_norm == pytest.approx(norm, rel=1e-13)
        expected.append([g * min(1.0, 2.0 / (norm + 1e-6)) for g in step_grads])
    want = ref.adam(params, expected, [0.01] * 3, weight_decay=0.01, decoupled=True)[-1]
    for got, value in zip(optimizer.params, want):
        np.testing.assert_allclose(got.numpy(), value, rtol=1e-12, atol=1e-14)


def test_infinity_measures_without_clipping_and_plain_steps_report_no_norm():
    params, grads = ref.random_problem(2)
    measured, plain = AdamW(ref.tensors(params)), AdamW(ref.tensors(params))
    for step_grads in grads:
        measured.step(ref.tensors(step_grads), max_grad_norm=math.inf)
        plain.step(ref.tensors(step_grads))
    assert measured.last_grad_norm == pytest.approx(clipped(grads[-1], 1.0)[1], rel=1e-12)
    assert plain.last_grad_norm is None
    for a, b in zip(measured.params, plain.params):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    measured.step(ref.tensors(grads[0]))  # an unclipped step: the old norm is not its own
    assert measured.last_grad_norm is None


def mlp(seed=0):
    """A 7-13-5 MLP, its cross-entropy loss and placeholders, and the same MLP in PyTorch
    holding the same weights."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    theirs = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.ReLU(),
                                 torch.nn.Linear(13, 5))
    ours = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5))
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x, y = ad.Variable("x"), ad.Variable("y")
    return ours, F.cross_entropy(ours(x), y), x, y, theirs


def batches(count=10, rows=12, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((rows, 7)).astype(np.float32) * 3,
             rng.integers(0, 5, rows)) for _ in range(count)]


def torch_run(model, data, max_norm):
    """PyTorch's losses, norms (what clip_grad_norm_ returns) and final weights."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    losses, norms = [], []
    for images, labels in data:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(images)),
                                                 torch.from_numpy(labels))
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, norms, {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("max_norm", [0.5, 100.0], ids=["active", "inactive"])
def test_minimize_matches_torch_adamw_with_clip_grad_norm(max_norm):
    ours, loss, x, y, theirs = mlp()
    data = batches()
    want_losses, want_norms, want_weights = torch_run(theirs, data, max_norm)
    assert (max(want_norms) > max_norm) == (max_norm < 100)
    step = AdamW(ours.parameters(), lr=0.01).minimize(loss, max_grad_norm=max_norm)
    assert step.last_grad_norm is None  # no step yet
    for (images, labels), want_loss, want_norm in zip(data, want_losses, want_norms):
        got = step({x: images, y: labels})
        np.testing.assert_allclose(got, want_loss, rtol=1e-5)
        np.testing.assert_allclose(step.last_grad_norm, want_norm, rtol=1e-5)
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(value, want_weights[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


BAD = [(-1.0, ArgumentError), (0, ArgumentError), (float("nan"), ArgumentError),
       (-math.inf, ArgumentError), ("1.0", ArgumentTypeError), (True, ArgumentTypeError),
       ([1.0], ArgumentTypeError), (1 + 2j, ArgumentTypeError),
       (np.array([1.0, 2.0]), ArgumentTypeError)]


@pytest.mark.parametrize("value, error", BAD, ids=[repr(v) for v, _ in BAD])
def test_a_bad_max_grad_norm_is_a_named_error_that_changes_nothing(value, error):
    ours, loss, x, y, _ = mlp()
    with pytest.raises(error, match="AdamW.minimize: max_grad_norm must be"):
        AdamW(ours.parameters()).minimize(loss, max_grad_norm=value)
    step = AdamW(ours.parameters()).minimize(loss)
    with pytest.raises(error, match="TrainStep: max_grad_norm must be"):
        step.max_grad_norm = value
    params, grads = ref.random_problem(1)
    optimizer = SGD(ref.tensors(params), 0.1, momentum=0.9)
    with pytest.raises(error, match=r"SGD.step: max_grad_norm must be"):
        optimizer.step(ref.tensors(grads[0]), max_grad_norm=value)
    assert optimizer.steps == 0
    for got, want in zip(optimizer.params, params):
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("kind", ["minimize", "distributed"])
def test_a_refused_step_changes_nothing_and_reports_no_norm(kind):
    ours, loss, x, y, _ = mlp()
    optimizer = AdamW(ours.parameters(), lr=0.01)
    step = (optimizer.minimize(loss, max_grad_norm=0.5) if kind == "minimize"
            else DistributedStep(optimizer, loss, max_grad_norm=0.5))
    (images, labels), (more, more_labels) = batches(2)
    step({x: images, y: labels})
    norm = step.last_grad_norm
    assert norm > 0.5
    before = {**ours.state_dict(), **optimizer.state_dict()}
    poisoned = images.copy()
    poisoned[3, 2] = np.nan
    with pytest.raises(TrainingError, match="became nan"):
        step({x: poisoned, y: labels})
    assert step.last_grad_norm is None
    for name, value in {**ours.state_dict(), **optimizer.state_dict()}.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    step({x: more, y: more_labels})
    assert step.last_grad_norm is not None and step.last_grad_norm != norm


def test_train_step_and_distributed_step_outside_a_job_agree():
    data = batches(3)
    results = []
    for make in (lambda o, loss: TrainStep(o, loss, max_grad_norm=0.5),
                 lambda o, loss: DistributedStep(o, loss, max_grad_norm=0.5)):
        ours, loss, x, y, _ = mlp()
        step = make(Adam(ours.parameters(), lr=0.01), loss)
        norms = []
        for images, labels in data:
            step({x: images, y: labels})
            norms.append(step.last_grad_norm)
        results.append((norms, ours.state_dict()))
    (norms, weights), (other_norms, other_weights) = results
    assert norms == other_norms
    for name in weights:
        np.testing.assert_array_equal(weights[name], other_weights[name])


def test_max_grad_norm_changes_between_steps_without_compiling():
    ours, loss, x, y, _ = mlp()
    optimizer = SGD(ours.parameters(), 0.1)
    step = optimizer.minimize(loss, max_grad_norm=0.5)
    (images, labels), = batches(1)
    step({x: images, y: labels})
    kernel = optimizer._clipped_kernel
    step.max_grad_norm = 0.25
    step({x: images, y: labels})
    assert optimizer._clipped_kernel is kernel
    step.max_grad_norm = None
    step({x: images, y: labels})
    assert step.last_grad_norm is None
    # A smaller last batch: new gradient buffers, which the clipped kernel reads too.
    step.max_grad_norm = 1e-3
    grads = ad.Executor(ad.gradients(loss, ours.parameters())).run(
        {x: images[:5], y: labels[:5]}, convert_to_numpy_ret_vals=True)
    before = [p.numpy() for p in ours.parameters()]
    step({x: images[:5], y: labels[:5]})
    want, norm = clipped(grads, 1e-3)
    assert step.last_grad_norm == pytest.approx(norm, rel=1e-6)
    for p, b, g in zip(ours.parameters(), before, want):
        np.testing.assert_allclose(p.numpy(), b - 0.1 * g, rtol=1e-6, atol=1e-7)


TWO_RANKS = Path(__file__).parent / "clip_two_ranks.py"


def test_two_ranks_clip_the_global_batch_gradient(tmp_path):
    """Two MPI ranks, each with half of every batch, train as one process with the whole
    batch: the norm clipped is that of the all-reduced gradient."""
    pytest.importorskip("mpi4py")
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    if not mpirun.exists():
        pytest.skip("needs mpirun (pip install 'dlsys[distributed]')")
    argv = [str(mpirun), "--oversubscribe", "-n", "2", sys.executable, str(TWO_RANKS)]
    if os.geteuid() == 0:
        argv.insert(1, "--allow-run-as-root")
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("clipped as one process") == 2, done.stdout
