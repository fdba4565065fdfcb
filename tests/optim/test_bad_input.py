"""Every bad argument to an optimiser is a named DlsysError, and nothing is half-applied."""

import numpy as np
import optim_reference as ref
import pytest
import tvm

from dlsys import autodiff as ad
from dlsys import tvm_op as op
from dlsys.errors import ArgumentError, ArgumentTypeError, DlsysError, DtypeError, ShapeError
from dlsys.optim import SGD, Adam, AdamW

PARAMS = ref.tensors(ref.random_problem(0, shapes=[(3, 5), (7,)])[0])


@pytest.mark.parametrize("make, error, words", [
    (lambda: SGD(PARAMS, 0), ArgumentError, "SGD: lr must be positive, got 0"),
    (lambda: SGD(PARAMS, -0.1), ArgumentError, "lr must be positive"),
    (lambda: SGD(PARAMS, float("nan")), ArgumentError, "lr must be a finite"),
    (lambda: SGD(PARAMS, float("inf")), ArgumentError, "lr must be a finite"),
    (lambda: SGD(PARAMS, 1e-50), ArgumentError, "rounds to 0.0 in float32"),
    (lambda: SGD(PARAMS, "0.1"), ArgumentTypeError, "lr must be a number"),
    (lambda: Adam(PARAMS, lr=0), ArgumentError, "Adam: lr"),
    (lambda: AdamW(PARAMS, lr=-1), ArgumentError, "AdamW: lr"),
    (lambda: Adam(PARAMS, betas=(1.0, 0.999)), ArgumentError, r"betas\[0\] must be in \[0, 1\)"),
    (lambda: Adam(PARAMS, betas=(-0.1, 0.999)), ArgumentError, r"betas\[0\]"),
    (lambda: Adam(PARAMS, betas=(0.9, 1.5)), ArgumentError, r"betas\[1\]"),
    (lambda: Adam(PARAMS, betas=(0.9, 0.999999999)), ArgumentError, "also in float32"),
    (lambda: Adam(PARAMS, betas=(0.9, float("nan"))), ArgumentError, r"betas\[1\]"),
    (lambda: Adam(PARAMS, betas=0.9), ArgumentTypeError, "betas must be a pair"),
    (lambda: Adam(PARAMS, betas=(0.9,)), ArgumentTypeError, "betas must be a pair"),
    (lambda: Adam(PARAMS, betas=(0.9, "0.99")), ArgumentTypeError, r"betas\[1\] must be a num"),
    (lambda: Adam(PARAMS, eps=0), ArgumentError, "eps must be positive"),
    (lambda: Adam(PARAMS, eps=-1e-8), ArgumentError, "eps must be positive"),
    (lambda: AdamW(PARAMS, eps=1e-60), ArgumentError, "eps must be positive.*rounds"),
    (lambda: Adam(PARAMS, weight_decay=-0.1), ArgumentError, "weight_decay must be zero or"),
    (lambda: AdamW(PARAMS, weight_decay=-0.1), ArgumentError, "AdamW: weight_decay"),
    (lambda: SGD(PARAMS, 0.1, momentum=-0.9), ArgumentError, "momentum must be zero or more"),
    (lambda: SGD(PARAMS, 0.1, dampening=-0.1), ArgumentError, "dampening must be zero"),
    (lambda: SGD(PARAMS, 0.1, weight_decay=-1), ArgumentError, "weight_decay"),
    (lambda: SGD(PARAMS, 0.1, nesterov=True), ArgumentError, "nesterov needs a positive mom"),
    (lambda: SGD(PARAMS, 0.1, momentum=0.9, dampening=0.1, nesterov=True), ArgumentError,
     "zero dampening"),
    (lambda: SGD(PARAMS, 0.1, momentum=0.9, nesterov="yes"), ArgumentTypeError, "nesterov"),
    (lambda: SGD([], 0.1), ArgumentError, "params is empty"),
    (lambda: Adam(iter([])), ArgumentError, "params is empty"),
    (lambda: SGD(PARAMS[0], 0.1), ArgumentTypeError, r"write \[p\] for one"),
    (lambda: SGD([ad.Variable("x")], 0.1), ArgumentTypeError, "x, not a Parameter"),
    (lambda: SGD([np.ones(3, np.float32)], 0.1), ArgumentTypeError, r"params\[0\] must be"),
    (lambda: SGD([PARAMS[0], tvm.runtime.tensor(np.ones(3))], 0.1), DtypeError,
     r"params\[1\] has dtype float64"),
    (lambda: SGD([tvm.runtime.tensor(np.ones(3, np.int32))], 0.1), DtypeError, "int32"),
    (lambda: SGD([PARAMS[0], PARAMS[1], PARAMS[0]], 0.1), ArgumentError,
     r"params\[2\] is the same tensor as params\[0\]"),
    (lambda: SGD(PARAMS, 0.1, target="cuda"), ArgumentError, "target 'cuda' does not fit"),
])
def test_bad_constructor_arguments(make, error, words):
    with pytest.raises(error, match=words) as err:
        make()
    assert isinstance(err.value, DlsysError)


def test_lr_setter_refuses_and_keeps_the_old_rate():
    optimizer = SGD(PARAMS, 0.1)
    for bad in (0, -1, float("nan"), 1e-50, None):
        with pytest.raises(DlsysError, match="lr"):
            optimizer.lr = bad
        assert optimizer.lr == 0.1
    optimizer.lr = 0.25
    assert optimizer.lr == 0.25


def good_grads():
    return ref.tensors([np.ones((3, 5), np.float32), np.ones(7, np.float32)])


@pytest.mark.parametrize("grads, error, words", [
    (lambda: good_grads()[:1], ArgumentError, "got 1 gradients for 2 parameters"),
    (lambda: good_grads() * 2, ArgumentError, "got 4 gradients"),
    (lambda: [good_grads()[0], tvm.runtime.tensor(np.ones(8, np.float32))], ShapeError,
     r"grads\[1\] has shape \(8,\), its parameter \(7,\)"),
    (lambda: [good_grads()[0], tvm.runtime.tensor(np.ones(7))], DtypeError,
     r"grads\[1\] has dtype float64"),
    (lambda: [np.ones((3, 5), np.float32), good_grads()[1]], ArgumentTypeError,
     r"grads\[0\] must be a TVM tensor"),
    (lambda: good_grads()[0], ArgumentTypeError, "grads must be a list"),
])
@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.1, momentum=0.9), lambda p: Adam(p)],
                         ids=["momentum", "adam"])
def test_bad_gradients_change_nothing(make, grads, error, words):
    params = ref.tensors([p.numpy() for p in PARAMS])
    optimizer = make(params)
    optimizer.step(good_grads())  # bound once: a bad list must still be checked
    before = optimizer.state_dict()
    values = [p.numpy() for p in params]
    with pytest.raises(error, match=words):
        optimizer.step(grads())
    after = optimizer.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    for p, v in zip(params, values):
        np.testing.assert_array_equal(p.numpy(), v)


def test_public_builders_check_and_share_the_optimisers_kernels():
    shapes = [(3, 5), (7,)]
    assert op.make_adam_update(shapes, "llvm", "llvm", "adam") is Adam(PARAMS)._kernel
    assert (op.make_sgd_update_fused(shapes, True, True, "llvm", "llvm", "sgd")
            is SGD(PARAMS, 0.1, momentum=0.9, nesterov=True)._kernel)
    with pytest.raises(ArgumentError, match="shapes must list"):
        op.make_adam_update([], "llvm", "llvm", "adam")
    with pytest.raises(ShapeError, match=r"shapes\[1\]"):
        op.make_adam_update([(3, 5), (0,)], "llvm", "llvm", "adam")
    with pytest.raises(ArgumentError, match="nesterov needs momentum"):
        op.make_sgd_update_fused(shapes, False, True, "llvm", "llvm", "sgd")
    with pytest.raises(ArgumentTypeError, match="momentum must be a bool"):
        op.make_sgd_update_fused(shapes, 0.9, False, "llvm", "llvm", "sgd")
