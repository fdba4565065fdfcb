"""Every optimiser against a numpy implementation of PyTorch's documented algorithm, step by
step, on parameters of odd shapes; and no kernel is compiled per step or per rate."""

import numpy as np
import optim_reference as ref
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlsys.kernels import build
from dlsys.ops.placeholder import Parameter
from dlsys.optim import SGD, Adam, AdamW, StepLR

STEPS = 5
SGD_CASES = [
    {},
    {"weight_decay": 0.05},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.02},
    {"momentum": 0.8, "nesterov": True},
    {"momentum": 0.7, "nesterov": True, "weight_decay": 0.1},
]
ADAM_CASES = [
    {},
    {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1},
    {"lr": 0.05, "eps": 1e-3, "betas": (0.0, 0.5)},
]
ADAMW_CASES = [{}, {"lr": 0.02, "weight_decay": 0.05, "betas": (0.85, 0.95)}]



def run_steps(optimizer, grads_per_step, lrs=None):
    history = []
    for step, grads in enumerate(grads_per_step):
        if lrs is not None:
            optimizer.lr = lrs[step]
        optimizer.step(ref.tensors(grads))
        history.append([p.numpy() for p in optimizer.params])
    return history


def assert_history_close(got, expected, dtype=np.float32):
    # A few float32 roundings of the update (steps of up to 0.3 here); a wrong rule is off by
    # a sizeable part of a step.
    tolerance = ({"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32
                 else {"rtol": 1e-12, "atol": 1e-14})
    for step, (got_params, expected_params) in enumerate(zip(got, expected), start=1):
        for i, (g, e) in enumerate(zip(got_params, expected_params)):
            np.testing.assert_allclose(g, e, **tolerance, err_msg=f"step {step}, param {i}")


@pytest.mark.parametrize("case", SGD_CASES, ids=str)
def test_sgd_matches_pytorch_algorithm(case):
    params, grads = ref.random_problem(STEPS)
    optimizer = SGD(ref.tensors(params), 0.1, **case)
    expected = ref.sgd(params, grads, [0.1] * STEPS, **case)
    assert_history_close(run_steps(optimizer, grads), expected)


@pytest.mark.parametrize("make, case", [(Adam, c) for c in ADAM_CASES]
                         + [(AdamW, c) for c in ADAMW_CASES], ids=str)
def test_adam_and_adamw_match_pytorch_algorithm(make, case):
    params, grads = ref.random_problem(STEPS)
    optimizer = make(ref.tensors(params), **case)
    settings = {"weight_decay": 1e-2 if make is AdamW else 0.0, **case}
    lr = settings.pop("lr", 1e-3)
    expected = ref.adam(params, grads, [lr] * STEPS, decoupled=make is AdamW, **settings)
    assert_history_close(run_steps(optimizer, grads), expected)


def test_adamw_decay_differs_from_adam_l2():
    """The two decays are different rules: the same weight_decay gives other parameters."""
    params, grads = ref.random_problem(2)
    adam = Adam(ref.tensors(params), lr=0.01, weight_decay=0.5)
    adamw = AdamW(ref.tensors(params), lr=0.01, weight_decay=0.5)
    a, w = run_steps(adam, grads)[-1], run_steps(adamw, grads)[-1]
    assert not np.allclose(a[0], w[0], rtol=1e-4)


def test_learning_rate_changes_between_steps():
    params, grads = ref.random_problem(STEPS)
    lrs = [0.1, 0.05, 0.2, 0.01, 0.3]
    for make, reference in [
        (lambda p: SGD(p, 1.0, momentum=0.9), lambda: ref.sgd(params, grads, lrs, momentum=0.9)),
        (lambda p: Adam(p, lr=1.0), lambda: ref.adam(params, grads, lrs)),
        (lambda p: AdamW(p, lr=1.0), lambda: ref.adam(params, grads, lrs, weight_decay=1e-2,
                                                      decoupled=True)),
    ]:
        assert_history_close(run_steps(make(ref.tensors(params)), grads, lrs), reference())


@pytest.mark.parametrize("make, reference", [
    (lambda p: SGD(p, 0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda p, g: ref.sgd(p, g, [0.1] * STEPS, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (lambda p: Adam(p, lr=0.01, weight_decay=0.1),
     lambda p, g: ref.adam(p, g, [0.01] * STEPS, weight_decay=0.1)),
], ids=["sgd", "adam"])
def test_float64_parameters(make, reference):
    params, grads = ref.random_problem(STEPS, dtype=np.float64)
    optimizer = make(ref.tensors(params))
    assert optimizer.dtype == "float64"
    assert_history_close(run_steps(optimizer, grads), reference(params, grads), np.float64)


def test_parameter_nodes_update_their_data_in_place():
    params, grads = ref.random_problem(3)
    nodes = [Parameter(p, name=f"p{i}") for i, p in enumerate(params)]
    held = [n.data for n in nodes]
    optimizer = Adam(nodes, lr=0.01)
    run_steps(optimizer, grads)
    assert all(n.data is t for n, t in zip(nodes, held))
    assert_history_close([[n.numpy() for n in nodes]], [ref.adam(params, grads, [0.01] * 3)[-1]])
    assert optimizer.steps == 3


def test_a_step_is_one_kernel_call(monkeypatch):
    params, grads = ref.random_problem(2)
    optimizer = Adam(ref.tensors(params))
    calls = []
    real = optimizer._kernel

    class Counting:
        def func(self, *args):
            calls.append(len(args))
            real.func(*args)

    monkeypatch.setattr(optimizer, "_kernel", Counting())
    run_steps(optimizer, grads)
    # lr, coefficients, step, 4 tensors per parameter in, step and 3 per parameter out.
    assert calls == [3 + 4 * len(params) + 1 + 3 * len(params)] * 2


def test_rates_steps_and_new_optimisers_compile_nothing(monkeypatch):
    compiled = []
    real = build.compile_module

    def counting(*args, **kwargs):
        compiled.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "compile_module", counting)
    build.clear_memory_cache()
    params, grads = ref.random_problem(6)
    optimizers = [SGD(ref.tensors(params), 0.1, momentum=0.9), Adam(ref.tensors(params))]
    assert len(compiled) == 2
    for optimizer in optimizers:
        schedule = StepLR(optimizer, step_size=2, gamma=0.5)
        for step, g in enumerate(grads):
            optimizer.lr = 0.01 * (step + 1)
            schedule.step()
            optimizer.step(ref.tensors(g))
    # Other coefficients are runtime values too: a new optimiser reuses the kernel.
    SGD(ref.tensors(params), 0.3, momentum=0.5, dampening=0.1, weight_decay=0.2)
    AdamW(ref.tensors(params), lr=0.1, betas=(0.5, 0.6), eps=1e-4, weight_decay=0.3)
    assert len(compiled) == 2


# Fixed shapes, so that every example reuses one compiled kernel: the coefficients are
# runtime values, which is what lets a property test sweep them cheaply.
FUZZ_SHAPES = [(5, 3), (17,)]
rates = st.floats(1e-4, 0.5)
fractions = st.floats(0.0, 0.99)


@given(lr=rates, momentum=fractions, dampening=st.floats(0.0, 1.0), nesterov=st.booleans(),
       weight_decay=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_sgd_property(lr, momentum, dampening, nesterov, weight_decay, seed):
    if nesterov:
        momentum, dampening = max(momentum, 0.1), 0.0
    case = {"momentum": momentum, "dampening": dampening, "nesterov": nesterov,
            "weight_decay": weight_decay}
    params, grads = ref.random_problem(3, seed=seed, shapes=FUZZ_SHAPES)
    optimizer = SGD(ref.tensors(params), lr, **case)
    assert_history_close(run_steps(optimizer, grads),
                         ref.sgd(params, grads, [lr] * 3, **case))


@given(lr=rates, beta1=fractions, beta2=fractions, eps=st.floats(1e-8, 1e-2),
       weight_decay=st.floats(0.0, 0.5), decoupled=st.booleans(), seed=st.integers(0, 2**16))
def test_adam_property(lr, beta1, beta2, eps, weight_decay, decoupled, seed):
    params, grads = ref.random_problem(3, seed=seed, shapes=FUZZ_SHAPES)
    make = AdamW if decoupled else Adam
    optimizer = make(ref.tensors(params), lr=lr, betas=(beta1, beta2), eps=eps,
                     weight_decay=weight_decay)
    expected = ref.adam(params, grads, [lr] * 3, betas=(beta1, beta2), eps=eps,
                        weight_decay=weight_decay, decoupled=decoupled)
    assert_history_close(run_steps(optimizer, grads), expected)
