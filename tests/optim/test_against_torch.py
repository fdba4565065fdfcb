"""The fused kernels and the schedules against torch.optim itself, where PyTorch is installed
(it is never a dependency of dlsys: these tests are skipped without it)."""

import inspect

import numpy as np
import optim_reference as ref
import pytest
import tvm

from dlsys.optim import SGD, Adam, AdamW, CosineAnnealingLR, LinearWarmup, SequentialLR

torch = pytest.importorskip("torch")

CASES = [
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    (Adam, torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    (AdamW, torch.optim.AdamW, {"lr": 0.01, "eps": 1e-6}),
]


@pytest.mark.parametrize("ours, theirs, settings", CASES,
                         ids=["sgd-dampening", "sgd-nesterov", "adam", "adamw"])
def test_matches_torch_optim(ours, theirs, settings):
    params, grads = ref.random_problem(6)
    optimizer = ours([tvm.runtime.tensor(p) for p in params], **settings)
    torch_params = [torch.tensor(p, requires_grad=True) for p in params]
    torch_optimizer = theirs(torch_params, **settings)
    for step_grads in grads:
        optimizer.step([tvm.runtime.tensor(g) for g in step_grads])
        for p, g in zip(torch_params, step_grads):
            p.grad = torch.tensor(g)
        torch_optimizer.step()
    for got, want in zip(optimizer.params, torch_params):
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adamw_defaults_are_torchs():
    """lr 1e-3, betas (0.9, 0.999), eps 1e-8 and a decoupled weight decay of 0.01, as the
    signature says and as the updates show (the decay of a parameter whose gradient is 0)."""
    names = ("lr", "betas", "eps", "weight_decay")
    ours = inspect.signature(AdamW).parameters
    theirs = inspect.signature(torch.optim.AdamW).parameters
    assert {n: ours[n].default for n in names} == {n: theirs[n].default for n in names}
    test_matches_torch_optim(AdamW, torch.optim.AdamW, {})
    param = np.ones(4, np.float32)
    optimizer = AdamW([tvm.runtime.tensor(param)])
    optimizer.step([tvm.runtime.tensor(np.zeros(4, np.float32))])
    np.testing.assert_allclose(optimizer.params[0].numpy(), 1 - 1e-3 * 0.01, rtol=1e-7)


@pytest.mark.parametrize("start_factor, warmup, total, eta_min",
                         [(1 / 3, 5, 20, 0.0), (0.01, 3, 10, 1e-4), (0.5, 1, 4, 0.0)])
def test_warmup_then_cosine_is_torchs_sequential_lr(start_factor, warmup, total, eta_min):
    """``SequentialLR([LinearWarmup, CosineAnnealingLR])`` gives the learning rates of
    PyTorch's ``SequentialLR([LinearLR, CosineAnnealingLR])`` step for step (past the end of
    the cosine too), and AdamW stepping under it the same parameters."""
    schedulers = torch.optim.lr_scheduler
    params, grads = ref.random_problem(total + 3, shapes=[(3, 5), (7,)])
    torch_params = [torch.tensor(p, requires_grad=True) for p in params]
    torch_optimizer = torch.optim.AdamW(torch_params, lr=0.1)
    torch_schedule = schedulers.SequentialLR(torch_optimizer, [
        schedulers.LinearLR(torch_optimizer, start_factor=start_factor, total_iters=warmup),
        schedulers.CosineAnnealingLR(torch_optimizer, T_max=total - warmup, eta_min=eta_min)],
        milestones=[warmup])
    optimizer = AdamW(ref.tensors(params), lr=0.1)
    schedule = SequentialLR(optimizer, [
        LinearWarmup(optimizer, warmup, start_factor=start_factor),
        CosineAnnealingLR(optimizer, total - warmup, eta_min=eta_min)], milestones=[warmup])
    for step_grads in grads:
        assert optimizer.lr == pytest.approx(torch_optimizer.param_groups[0]["lr"],
                                             rel=1e-12, abs=1e-15)
        optimizer.step(ref.tensors(step_grads))
        for p, g in zip(torch_params, step_grads):
            p.grad = torch.tensor(g)
        torch_optimizer.step()
        torch_schedule.step()
        schedule.step()
    for got, want in zip(optimizer.params, torch_params):
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
