"""Property tests: random graphs (see ``graph_gen.random_graphs``) through the whole stack.

Everything runs in float64. Planned and unplanned runs execute the same kernels in the same
order, so they must agree bit for bit. Against numpy the kernels may sum in another order:
rtol = 1e-9, atol = 1e-10 (a value that is 0 in exact arithmetic, such as the gradient of a
layer norm's output sum, comes out as the rounding of terms near 1: 1e-11, either sign).
Gradients against central differences (eps = 1e-6): rtol = 1e-5, atol = 1e-6, looser
than per-operator checks because random chains multiply values and so scale the rounding
error of the difference quotient.
"""

from __future__ import annotations

import numpy as np
from graph_gen import numerical_gradient, numpy_eval, random_graphs
from hypothesis import assume, given
from hypothesis import strategies as st

from dlsys import autodiff as ad
from dlsys.passes.memory_plan import live_ranges, resolve_aliases, verify_plan

ATOL = 1e-10


def _eval_nodes(graph, draw_subset):
    """The output, a random subset of intermediate values (so that kept values sit in the
    middle of the plan) and, where defined, the gradients of the output."""
    nodes = [graph.output] + [v for v in draw_subset(graph.values[:-1])]
    if not graph.has_softmax:
        nodes += ad.gradients(graph.output, graph.differentiable)
    return nodes


def _feeds_for(executor, graph):
    """The feeds the executor reads: an operator such as OnesLike cuts its output off from
    placeholders upstream, and an executor refuses feeds it never reads. Parameters (batch
    norm's running statistics) hold their values and are not fed."""
    return {p: graph.feeds[p] for p in executor.placeholders if p in graph.feeds}


def _peak_by_rescanning(prepared, keep) -> int:
    """The planner's lower bound the slow, obvious way: the live values summed at each step,
    an in-place output and the input it overwrites counted once."""
    first, last = live_ranges(prepared.steps, keep)
    root = resolve_aliases(prepared.steps)
    peak = 0
    for t, step in enumerate(prepared.steps):
        live = {o for o in first if first[o] <= t <= last[o]}
        if step.output in prepared.plan.inplace_steps:
            live.discard(root[step.inplace_input])
        peak = max(peak, sum(int(np.prod(prepared.shapes[o])) for o in live))
    return peak * prepared.plan.itemsize


@given(graph=random_graphs() | random_graphs(integer_feeds=True), data=st.data())
def test_planned_equals_unplanned_and_numpy(graph, data):
    def subset(values):
        return data.draw(st.lists(st.sampled_from(values), max_size=3)) if values else []

    nodes = _eval_nodes(graph, subset)
    planned = ad.Executor(nodes, dtype="float64")
    unplanned = ad.Executor(nodes, dtype="float64", plan_memory=False)
    got = planned.run(_feeds_for(planned, graph), convert_to_numpy_ret_vals=True)
    want = unplanned.run(_feeds_for(planned, graph), convert_to_numpy_ret_vals=True)

    prepared = planned._prepared
    assert verify_plan(prepared.steps, prepared.shapes, set(nodes), prepared.plan) == []
    assert prepared.plan.peak_live_bytes == _peak_by_rescanning(prepared, set(nodes))
    expected = numpy_eval(nodes, graph.feeds)
    for node, g, w, e in zip(nodes, got, want, expected):
        assert np.array_equal(g, w), node.name
        assert g.shape == e.shape, node.name
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=ATOL, err_msg=node.name)
    # A second run over the same buffers must give the same answers again.
    again = planned.run(_feeds_for(planned, graph), convert_to_numpy_ret_vals=True)
    for node, g, a in zip(nodes, got, again):
        assert np.array_equal(g, a), node.name


@given(graph=random_graphs() | random_graphs(integer_feeds=True), data=st.data())
def test_returned_tensors_fed_back_are_read_as_they_were(graph, data):
    # A run's outputs (planned storage, and the placeholders' feed buffers, as every
    # placeholder is evaluated too) fed back as the next run's feeds, as TVM tensors or numpy
    # views, while the other feeds take new values: they share memory with what that run
    # writes, and it must read them as they were when it began.
    def subset(values):
        return data.draw(st.lists(st.sampled_from(values), max_size=3)) if values else []

    nodes = _eval_nodes(graph, subset)
    executor = ad.Executor(nodes + [p for p in graph.feeds if p not in nodes], dtype="float64")
    feeds = _feeds_for(executor, graph)
    returned = executor.run(feeds)
    refed = {}
    for node, value in feeds.items():
        # Of the same type too: integer ids take ids, floats take floats.
        same_shape = [r for r in returned if tuple(r.shape) == value.shape
                      and str(r.dtype) == str(value.dtype)]
        if same_shape and data.draw(st.booleans()):
            tensor = data.draw(st.sampled_from(same_shape))
            refed[node] = np.from_dlpack(tensor) if data.draw(st.booleans()) else tensor
        else:
            refed[node] = np.flip(value)  # a new value in the operator's domain
    as_they_were = {node: np.array(np.from_dlpack(v)) for node, v in refed.items()}
    got = executor.run(refed, convert_to_numpy_ret_vals=True)
    expected = numpy_eval(executor.eval_node_list, as_they_were)
    for node, g, e in zip(executor.eval_node_list, got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=ATOL, err_msg=node.name)


@given(graph=random_graphs(allow_softmax=False)
       | random_graphs(allow_softmax=False, integer_feeds=True))
def test_gradients_match_finite_differences(graph):
    # Relu's kink inside a finite difference would make the quotient meaningless.
    if graph.relu_inputs:
        pre = numpy_eval(graph.relu_inputs, graph.feeds)
        assume(min(np.abs(p).min() for p in pre) > 1e-3)
    wrt = graph.differentiable
    grads = ad.gradients(graph.output, wrt)
    executor = ad.Executor(grads, dtype="float64")
    results = executor.run(_feeds_for(executor, graph), convert_to_numpy_ret_vals=True)

    def objective():
        # gradients() seeds the output with ones: it differentiates the output's sum.
        return numpy_eval([graph.output], graph.feeds)[0].sum()

    for node, analytic in zip(wrt, results):
        numeric = numerical_gradient(objective, graph.feeds[node])
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6, err_msg=node.name)
