"""The memory plan: sound (checked by verify_plan, which must itself catch broken plans),
compact on the MLP training graph, and never overwriting a value that was asked for."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from graph_gen import build_mlp

from dlsys import autodiff as ad
from dlsys.passes.lower import Step
from dlsys.passes.memory_plan import live_ranges, plan_memory, verify_plan


def _verify(executor) -> list[str]:
    prepared = executor._prepared
    return verify_plan(prepared.steps, prepared.shapes, set(executor.eval_node_list),
                       prepared.plan)


@pytest.fixture(scope="module")
def mlp_run():
    """The MLP training graph run once at batch 1000, planned and unplanned."""
    mlp = build_mlp()
    feeds = mlp.feeds(batch=1000)
    planned = ad.Executor(mlp.eval_nodes)
    planned_results = planned.run(feeds, convert_to_numpy_ret_vals=True)
    reference = ad.Executor(mlp.eval_nodes, plan_memory=False)
    reference_results = reference.run(feeds, convert_to_numpy_ret_vals=True)
    return mlp, planned, planned_results, reference, reference_results


def test_mlp_plan_is_sound(mlp_run):
    _, planned, _, reference, _ = mlp_run
    assert _verify(planned) == []
    assert _verify(reference) == []


def test_mlp_plan_is_compact(mlp_run):
    _, planned, _, _, _ = mlp_run
    stats = planned.memory_stats()
    print(f"\nMLP 784-256-100-10, batch 1000, float32: {stats}")
    assert stats["planned_bytes"] <= 0.5 * stats["naive_bytes"]
    assert stats["planned_bytes"] <= 1.25 * stats["peak_live_bytes"]
    # The peak is a lower bound for any plan; a plan below it would be overlapping values.
    assert stats["planned_bytes"] >= stats["peak_live_bytes"]


def test_unplanned_reference_gives_every_value_its_own_buffer(mlp_run):
    _, _, _, reference, _ = mlp_run
    plan = reference._prepared.plan
    owners = {plan.storage_of[out] for s in reference._prepared.steps
              if s.alias_of is None for out in s.outputs}
    assert len(owners) == len(plan.storage_elements)
    assert reference.memory_stats()["inplace_steps"] == 0


def test_planned_results_equal_unplanned_bit_for_bit(mlp_run):
    mlp, _, planned_results, _, reference_results = mlp_run
    for node, got, want in zip(mlp.eval_nodes, planned_results, reference_results):
        assert np.array_equal(got, want), node.name


def test_kept_values_are_never_shared_with_a_later_value(mlp_run):
    _, planned, _, _, _ = mlp_run
    prepared = planned._prepared
    plan = prepared.plan
    for kept in planned.eval_node_list:
        if kept not in plan.storage_of:
            continue  # a feed, owned by the user
        sid = plan.storage_of[kept]
        defined_at = next(t for t, s in enumerate(prepared.steps) if kept in s.outputs)
        for step in prepared.steps[defined_at + 1:]:
            if step.alias_of is None:
                for out in step.outputs:
                    assert plan.storage_of[out] != sid, (kept.name, out.name)


def test_kept_outputs_survive_the_rest_of_the_run(mlp_run):
    # Returned tensors are views of the planned storage; reading them after the run must give
    # the reference values, which fails if a later step reused a kept value's buffer.
    mlp, planned, _, _, reference_results = mlp_run
    tensors = planned.run(mlp.feeds(batch=1000))
    for node, tensor, want in zip(mlp.eval_nodes, tensors, reference_results):
        assert np.array_equal(tensor.numpy(), want), node.name


# ------------------------------------------------------------ verify_plan can fail
def _simultaneously_live_pair(steps, keep):
    first, last = live_ranges(steps, keep)
    owners = list(first)
    for i, a in enumerate(owners):
        for b in owners[i + 1:]:
            if first[a] <= last[b] and first[b] <= last[a]:
                return a, b
    raise AssertionError("no two values are alive together")


def test_verify_plan_catches_two_live_values_in_one_buffer(mlp_run):
    _, planned, _, _, _ = mlp_run
    prepared, keep = planned._prepared, set(planned.eval_node_list)
    a, b = _simultaneously_live_pair(prepared.steps, keep)
    storage_of = dict(prepared.plan.storage_of)
    storage_of[b] = storage_of[a]
    broken = dataclasses.replace(prepared.plan, storage_of=storage_of)
    problems = verify_plan(prepared.steps, prepared.shapes, keep, broken)
    assert problems and any(a.name in p and b.name in p for p in problems)


def test_verify_plan_catches_a_buffer_too_small(mlp_run):
    _, planned, _, _, _ = mlp_run
    prepared, keep = planned._prepared, set(planned.eval_node_list)
    elements = list(prepared.plan.storage_elements)
    elements[0] -= 1
    broken = dataclasses.replace(prepared.plan, storage_elements=elements)
    problems = verify_plan(prepared.steps, prepared.shapes, keep, broken)
    assert any("smaller" in p for p in problems)


def test_verify_plan_catches_a_value_without_storage(mlp_run):
    _, planned, _, _, _ = mlp_run
    prepared, keep = planned._prepared, set(planned.eval_node_list)
    storage_of = dict(prepared.plan.storage_of)
    victim = prepared.steps[0].output
    del storage_of[victim]
    broken = dataclasses.replace(prepared.plan, storage_of=storage_of)
    problems = verify_plan(prepared.steps, prepared.shapes, keep, broken)
    assert any(victim.name in p for p in problems)


# ------------------------------------------------------- the planner on its own
def _chain():
    """x -> a = relu(x) -> b = a + 1 -> c = b * 2, all (4, 4)."""
    x = ad.Variable("x")
    a = ad.relu_op(x)
    b = a + 1.0
    c = b * 2.0
    shapes = {n: (4, 4) for n in (x, a, b, c)}
    steps = [Step(a, (x,), inplace_input=x), Step(b, (a,), inplace_input=a),
             Step(c, (b,), inplace_input=b)]
    return x, a, b, c, steps, shapes


def test_elementwise_chain_runs_in_place_in_one_buffer():
    _, a, b, c, steps, shapes = _chain()
    plan = plan_memory(steps, shapes, {c}, itemsize=4)
    assert len(plan.storage_elements) == 1
    assert plan.inplace_steps == {b, c}  # never over the feed x
    assert verify_plan(steps, shapes, {c}, plan) == []


def test_kept_intermediate_is_not_taken_over_in_place():
    _, a, b, c, steps, shapes = _chain()
    keep = {a, c}
    plan = plan_memory(steps, shapes, keep, itemsize=4)
    assert b not in plan.inplace_steps
    assert plan.storage_of[a] not in {plan.storage_of[b], plan.storage_of[c]}
    assert verify_plan(steps, shapes, keep, plan) == []


def test_buffer_freed_at_an_alias_step_is_reused():
    # a's last reader is an alias step (summing a to its own shape); the buffer must come
    # back there, so that c can take it instead of a second buffer.
    x = ad.Variable("x")
    a = ad.relu_op(x)
    alias = ad.reducesumto_op(a, x)
    c = ad.relu_op(x)
    shapes = {n: (4, 4) for n in (x, a, alias, c)}
    steps = [Step(a, (x,)), Step(alias, (a,), alias_of=a), Step(c, (x,))]
    plan = plan_memory(steps, shapes, {c}, itemsize=4)
    assert len(plan.storage_elements) == 1
    assert verify_plan(steps, shapes, {c}, plan) == []


def test_alias_of_a_feed_gets_no_storage_and_is_never_written():
    # broadcastto(x, y) with equal shapes is x itself; relu over it may not run in place
    # (that would overwrite the user's feed).
    x, y = ad.Variable("x"), ad.Variable("y")
    same = ad.broadcastto_op(x, y)
    out = ad.relu_op(same)
    executor = ad.Executor([out, same])
    x_val = np.array([[-1.0, 2.0], [3.0, -4.0]], dtype="float32")
    x_tensor = tvm.runtime.tensor(x_val)
    got_out, got_same = executor.run({x: x_tensor, y: np.zeros((2, 2))},
                                     convert_to_numpy_ret_vals=True)
    np.testing.assert_array_equal(got_out, np.maximum(x_val, 0))
    np.testing.assert_array_equal(got_same, x_val)
    np.testing.assert_array_equal(x_tensor.numpy(), x_val)
    assert same not in executor._prepared.plan.storage_of
    assert _verify(executor) == []


def test_contiguous_group_places_every_gradient_side_by_side():
    from graph_gen import build_mlp

    mlp = build_mlp()
    feeds = mlp.feeds(batch=16)
    nodes = [mlp.loss, *mlp.grads]
    plain = ad.Executor(nodes, dtype="float64").run(feeds, convert_to_numpy_ret_vals=True)
    executor = ad.Executor(nodes, dtype="float64", contiguous=mlp.grads)
    grouped = executor.run(feeds)
    for want, got in zip(plain, grouped):
        np.testing.assert_array_equal(got.numpy(), want)
    prepared = executor._prepared
    assert verify_plan(prepared.steps, prepared.shapes, set(nodes), prepared.plan) == []
    flat = executor.contiguous_buffer()
    # Each gradient starts on a 64-byte boundary (8 float64 elements).
    offsets = np.cumsum([0] + [-(-g.size // 8) * 8 for g in plain[1:]])
    for start, grad in zip(offsets, plain[1:]):
        np.testing.assert_array_equal(flat.numpy()[start:start + grad.size], grad.ravel())
    assert flat.shape == (offsets[-1],)
    # The returned gradients are views of that buffer: what a collective writes there, the
    # optimiser reads.
    flat.copyfrom(np.zeros(flat.shape, dtype="float64"))
    assert not any(g.numpy().any() for g in grouped[1:])


def test_contiguous_group_refuses_what_it_cannot_place():
    from dlsys.errors import ArgumentError

    x, w = ad.Variable("x"), ad.Variable("w")
    y = ad.matmul_op(x, w)
    with pytest.raises(ArgumentError, match="not among the nodes"):
        ad.Executor([y], contiguous=[ad.relu_op(y)])
    with pytest.raises(ArgumentError, match="x cannot be placed"):
        ad.Executor([y, x], contiguous=[y, x]).run({x: np.ones((2, 2)), w: np.ones((2, 2))})


def test_lenet_training_plan_is_within_a_tenth_of_the_live_peak():
    # Issue 10's bound: LeNet-5's training graph (fused convolutions, pooling, dense layers,
    # every gradient) planned in at most 1.1x its peak of live values, and sound.
    from dlsys.frontend.trainer import Trainer

    trainer = Trainer.for_model("lenet", 0, 0.05, 64)
    images = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    trainer.train_step(images, np.zeros(64, dtype=np.float32))
    stats = trainer.train_executor.memory_stats()
    assert stats["peak_live_bytes"] <= stats["planned_bytes"] <= 1.1 * stats["peak_live_bytes"]
    assert _verify(trainer.train_executor) == []
