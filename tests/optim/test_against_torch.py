"""The fused kernels against torch.optim itself, where PyTorch is installed (it is never a
dependency of dlsys: these tests are skipped without it)."""

import numpy as np
import optim_reference as ref
import pytest
import tvm

from dlsys.optim import SGD, Adam, AdamW

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
