"""Training under a memory budget (``passes.recompute``): bit-identical results to the plain
step for the MLP, LeNet-5, the batch-norm CNN and dropout; plans within the budget that the
planner's checker proves sound; a budget out of reach named with the smallest reachable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys import nn, optim
from dlsys.checks import parse_bytes
from dlsys.errors import ArgumentError, MemoryBudgetError
from dlsys.frontend.models import build_model
from dlsys.nn import functional as F
from dlsys.ops.random import DropoutOp
from dlsys.passes import pipeline
from dlsys.passes.gradient import gradients
from dlsys.passes.memory_plan import plan_memory, verify_plan
from dlsys.passes.recompute import checkpoint_sets, order_for_memory

# Rows enough that activations outweigh the weights, as where a budget matters.
BATCH = 64


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with weights drawn from ``seed``: two calls build the same model."""
    rng = np.random.default_rng(seed)
    model.load_state_dict({k: rng.normal(scale=0.3, size=v.shape).astype(np.float32)
                           for k, v in model.state_dict().items()})
    return model


def _deep_mlp(layers: int = 6, width: int = 32) -> nn.Module:
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(width, width), nn.ReLU()]
    return _seeded(nn.Sequential(*modules, nn.Linear(width, 10)))


def _images(shape, seed: int = 1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(BATCH, *shape)).astype(np.float32),
            rng.integers(0, 10, size=BATCH))


def _train(model: nn.Module, input_shape, budget=None, steps: int = 2):
    """Losses, the executor and the state dict after ``steps`` SGD steps on fixed batches."""
    x, y = ad.Variable("x"), ad.Variable("y")
    model.train()
    loss = F.cross_entropy(model(x), y)
    opt = optim.SGD(loss_params(model), lr=0.05, momentum=0.9)
    step = opt.minimize(loss, memory_budget=budget)
    losses = []
    for i in range(steps):
        images, labels = _images(input_shape, seed=i)
        losses.append(step({x: images, y: labels}))
    return losses, step.executor, model.state_dict()


def loss_params(model: nn.Module):
    return model.parameters()


def _smallest_budget(make_model, input_shape) -> int:
    with pytest.raises(MemoryBudgetError) as refused:
        _train(make_model(), input_shape, budget=1, steps=1)
    assert "smallest is" in str(refused.value)
    return refused.value.smallest_bytes


CASES = {
    "mlp": (lambda: _deep_mlp(width=16), (16,)),
    "lenet": (lambda: build_model("lenet", 3), (1, 28, 28)),
    "cnn": (lambda: build_model("cnn", 3), (1, 28, 28)),  # batch norm: running statistics
    # Eight dropout layers: deep enough that the smallest budget drops dropout outputs,
    # whose recomputed masks must be the first ones (the seed is advanced once per step).
    "dropout": (lambda: _seeded(nn.Sequential(
        *[m for _ in range(8) for m in (nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.2))],
        nn.Linear(16, 10))), (16,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_identical_at_the_smallest_budget(name):
    make_model, input_shape = CASES[name]
    plain_losses, plain_executor, plain_state = _train(make_model(), input_shape)
    smallest = _smallest_budget(make_model, input_shape)
    losses, executor, state = _train(make_model(), input_shape, budget=smallest)
    program = executor.program()
    assert program.recompute is not None
    stats = executor.memory_stats()
    # The budget counts the optimiser's state besides the program (held_bytes includes it).
    assert stats["planned_bytes"] + stats["held_bytes"] <= smallest
    assert stats["planned_bytes"] < plain_executor.memory_stats()["planned_bytes"]
    assert losses == plain_losses  # exactly: the same kernels on the same values
    assert state.keys() == plain_state.keys()
    for key in state:  # weights after two updates, and batch norm's running statistics
        np.testing.assert_array_equal(state[key], plain_state[key], err_msg=key)
    assert program.recompute.recomputed, "the smallest budget recomputes something"
    assert program.recompute.extra_flops > 0
    if name == "dropout":
        assert any(isinstance(n.op, DropoutOp) for n in program.recompute.recomputed)
    if name == "cnn":  # batch norm's affine step (fused with its ReLU), not its statistics
        assert any("BatchNormAffine" in n.name for n in program.recompute.recomputed)
    prepared = executor._prepared
    assert verify_plan(prepared.steps[program.first_per_run_step:], prepared.shapes,
                       set(executor.eval_node_list), prepared.plan,
                       fixed_bytes=program.fixed_bytes, budget_bytes=smallest) == []


def test_a_budget_the_plain_plan_fits_changes_nothing():
    make_model, input_shape = CASES["mlp"]
    _, plain_executor, _ = _train(make_model(), input_shape, steps=1)
    stats = plain_executor.memory_stats()
    _, executor, _ = _train(make_model(), input_shape, steps=1,
                            budget=stats["planned_bytes"] + 10 * stats["held_bytes"])
    assert executor.program().recompute is None
    assert [s.kernel for s in executor.program().steps] == \
        [s.kernel for s in plain_executor.program().steps]
    assert executor.memory_stats()["planned_bytes"] == stats["planned_bytes"]


def test_a_budget_out_of_reach_names_the_smallest_and_that_one_runs():
    make_model, input_shape = CASES["mlp"]
    smallest = _smallest_budget(make_model, input_shape)
    with pytest.raises(MemoryBudgetError, match=f"smallest is .*{smallest} bytes"):
        _train(make_model(), input_shape, budget=smallest - 1, steps=1)
    _train(make_model(), input_shape, budget=smallest, steps=1)


def _training_program(layers: int = 6, width: int = 32, batch: int = 64):
    model = _deep_mlp(layers, width)
    x, y = ad.Variable("x"), ad.Variable("y")
    loss = F.cross_entropy(model(x), y)
    params = model.parameters()
    outputs = [loss, *gradients(loss, params)]
    shapes = {x: (batch, width), y: (batch,)} | {p: p.shape for p in params}
    return outputs, shapes, {y: "int64"}


def test_budgets_between_plain_and_smallest_trade_bytes_for_work():
    outputs, shapes, dtypes = _training_program(layers=12, batch=256)
    plain = pipeline.compile(outputs, shapes, feed_dtypes=dtypes)
    held = plain.fixed_bytes
    with pytest.raises(MemoryBudgetError) as refused:
        pipeline.compile(outputs, shapes, pipeline.CompileOptions(memory_budget=1), dtypes)
    smallest = refused.value.smallest_bytes
    results = []
    for budget in np.linspace(smallest, held + plain.plan.planned_bytes, 5).astype(int):
        program = pipeline.compile(outputs, shapes,
                                   pipeline.CompileOptions(memory_budget=int(budget)), dtypes)
        assert program.plan.planned_bytes + held <= budget
        extra = program.recompute.extra_flops if program.recompute else 0
        results.append((program.plan.planned_bytes, extra))
    # Tighter budgets never cost less work; the loosest is the plain plan itself.
    extras = [extra for _, extra in results]
    assert extras == sorted(extras, reverse=True)
    assert results[-1] == (plain.plan.planned_bytes, 0)
    assert results[0][1] > 0


def test_the_checker_catches_a_recomputation_read_too_early_or_overwritten():
    outputs, shapes, dtypes = _training_program()
    with pytest.raises(MemoryBudgetError) as refused:
        pipeline.compile(outputs, shapes, pipeline.CompileOptions(memory_budget=1), dtypes)
    program = pipeline.compile(
        outputs, shapes, pipeline.CompileOptions(memory_budget=refused.value.smallest_bytes),
        dtypes)
    steps, keep = program.steps, set(outputs)
    assert verify_plan(steps, program.shapes, keep, program.plan) == []
    copies = [i for i, s in enumerate(steps) if s.output.name.endswith("(recomputed)")]
    assert copies
    # A recomputed value read before it is recomputed: its step moved after its reader.
    i = copies[0]
    reader = next(j for j in range(i + 1, len(steps)) if steps[i].output in steps[j].inputs)
    moved = steps[:i] + steps[i + 1:reader + 1] + [steps[i]] + steps[reader + 1:]
    assert any("before any step computes it" in p
               for p in verify_plan(moved, program.shapes, keep, program.plan))
    # An input of a later recomputation overwritten while still needed: a value born while
    # it lives placed in its storage.
    copy = steps[i]
    source = next(n for n in copy.inputs if n in program.plan.storage_of)
    rival = next(s.output for s in steps[:i] if s.output in program.plan.storage_of
                 and s.output is not source
                 and program.plan.storage_of[s.output] != program.plan.storage_of[source]
                 and steps.index(s) > next(t for t, st in enumerate(steps)
                                           if source in st.outputs))
    broken = dataclasses.replace(program.plan, storage_of={
        **program.plan.storage_of, rival: program.plan.storage_of[source]})
    broken.storage_elements[program.plan.storage_of[source]] = max(
        program.plan.storage_elements)
    assert any("holds live values" in p
               for p in verify_plan(steps, program.shapes, keep, broken))
    # And a plan above its budget.
    assert any("exceed the memory budget" in p
               for p in verify_plan(steps, program.shapes, keep, program.plan,
                                    fixed_bytes=program.fixed_bytes, budget_bytes=1))


def test_order_for_memory_keeps_every_step_and_shrinks_the_plan():
    outputs, shapes, dtypes = _training_program(layers=8, batch=128)
    program = pipeline.compile(outputs, shapes, feed_dtypes=dtypes)
    ordered = order_for_memory(program.steps, set(outputs), program.shapes)
    assert sorted(s.output.id for s in ordered) == sorted(s.output.id for s in program.steps)
    plan = plan_memory(ordered, program.shapes, set(outputs), 4)
    assert verify_plan(ordered, program.shapes, set(outputs), plan) == []
    assert plan.planned_bytes < program.plan.planned_bytes


def test_checkpoint_sets_run_from_keeping_all_to_keeping_few():
    outputs, shapes, _ = _training_program()
    stash = [n for n in outputs[0].inputs]  # any nodes with shapes will do
    node_shapes = {n: (4, 4) for n in stash}
    sets = checkpoint_sets(stash, node_shapes)
    assert sets[0] == frozenset(stash)  # a segment of zero bytes: everything kept
    assert sets[-1] == frozenset()  # one segment holding the whole stash


@pytest.mark.parametrize("text, size", [(4096, 4096), ("4096", 4096), ("512KiB", 512 << 10),
                                        ("64MiB", 64 << 20), ("1.5 GiB", 3 << 29)])
def test_budget_sizes_take_binary_units(text, size):
    assert parse_bytes("memory_budget", text) == size


@pytest.mark.parametrize("text", ["64MB", "lots", "0", "-3KiB"])
def test_budget_sizes_refuse_what_they_cannot_read(text):
    with pytest.raises(ArgumentError, match="memory_budget"):
        parse_bytes("memory_budget", text)


def test_minimize_counts_the_optimiser_state_in_the_budget():
    make_model, input_shape = CASES["mlp"]
    model = make_model()
    x, y = ad.Variable("x"), ad.Variable("y")
    loss = F.cross_entropy(model(x), y)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    step = opt.minimize(loss, memory_budget="64MiB")
    images, labels = _images(input_shape)
    step({x: images, y: labels})
    params = sum(p.data.numpy().nbytes for p in model.parameters())
    assert opt.state_bytes >= 2 * params  # Adam's two moments
    assert step.executor.memory_stats()["held_bytes"] >= params + opt.state_bytes
