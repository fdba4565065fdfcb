"""The compile pipeline: the program it makes of the MLP's training graph, its table, and that
the executor running it computes what numpy does."""

import re

import numpy as np
import pytest
from test_fusion import mlp_feeds, mlp_graph

from dlsys import autodiff as ad
from dlsys.passes import pipeline
from dlsys.testing.numpy_reference import loss_and_grads


def _mlp_program(**options):
    x, labels, weights, biases, loss, grads, logits = mlp_graph()
    feeds = mlp_feeds(x, labels, weights, biases)
    outputs = [loss, *grads]
    program = pipeline.compile(outputs, {p: np.shape(v) for p, v in feeds.items()},
                               pipeline.CompileOptions(**options))
    return program, outputs, feeds, (x, labels, weights, biases)


def test_training_program_steps_fuse_the_layers_and_cover_every_output():
    program, outputs, _, _ = _mlp_program()
    rows = program.rows()
    assert len(rows) == len(program.steps) == len(program.kernels)
    fused = sorted(r.operators for r in rows if r.kernel == "matmul_epilogue")
    assert fused == sorted([("MatMul", "bias_add", "relu")] * 2 + [("MatMul", "bias_add")]
                           + [("MatMul", "relu_mask")] * 2)
    computed = {out for step in program.steps for out in step.outputs}
    assert all(node in computed for node in outputs)
    # Training reads no constant: nothing is computed ahead of the runs.
    assert program.first_per_run_step == 0 and not program.constant_values


def test_table_names_every_kernel_and_storage_bytes_add_up_to_the_plan():
    program, _, _, _ = _mlp_program()
    table = str(program)
    assert table == pipeline.describe(program) == program.table()
    for step in program.steps:
        if step.alias_of is None:
            assert step.kernel.kind in table
    storage = program.storage_rows()
    assert sum(size for _, size, _ in storage) == program.plan.planned_bytes
    # The printed storage section adds up to the printed total too.
    title, steps, storage_section, totals = table.split("\n\n")
    assert len(steps.splitlines()) == 1 + len(program.steps)
    printed = [int(line.split()[1]) for line in storage_section.splitlines()[1:]]
    assert sum(printed) == program.plan.planned_bytes
    total = re.search(r"planned (\d+) bytes in (\d+) buffers", totals)
    assert total and int(total[1]) == program.plan.planned_bytes
    assert int(total[2]) == len(program.plan.storage_elements)
    # Each step's bytes are its outputs' sizes.
    itemsize = program.plan.itemsize
    for step, row in zip(program.steps, program.rows()):
        assert row.bytes == itemsize * sum(int(np.prod(program.shapes[o])) for o in step.outputs)


def test_executor_runs_the_compiled_program_and_matches_numpy():
    program, outputs, feeds, (x, labels, weights, biases) = _mlp_program()
    executor = ad.Executor(outputs)
    loss, *grads = executor.run(feeds, convert_to_numpy_ret_vals=True)
    # The executor's program is the one compile makes for the same shapes and options.
    assert executor.program().rows() == program.rows()
    assert executor.kernel_calls == sum(k is not None for k in program.kernels)
    params = {}
    for i, (w, b) in enumerate(zip(weights, biases)):
        params[f"{i}.weight"], params[f"{i}.bias"] = feeds[w].T, feeds[b]
    want_loss, want = loss_and_grads(params, feeds[x], feeds[labels])
    np.testing.assert_allclose(loss.reshape(()), want_loss, rtol=1e-5)
    n = len(weights)
    for i in range(n):
        np.testing.assert_allclose(grads[i], want[f"{i}.weight"].T, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(grads[n + i], want[f"{i}.bias"], rtol=1e-4, atol=1e-6)


def test_unfused_program_runs_one_kernel_per_node():
    program, _, _, _ = _mlp_program(fuse=False)
    assert all(len(r.operators) == 1 for r in program.rows())
    assert "matmul_epilogue" not in str(program)


def test_constants_are_computed_ahead_of_the_runs():
    x, labels, weights, biases, _, _, logits = mlp_graph()
    params = [*weights, *biases]
    shapes = {p: np.shape(v) for p, v in mlp_feeds(x, labels, weights, biases).items()
              if p is not labels}
    program = pipeline.compile([logits], shapes,
                               pipeline.CompileOptions(constants=frozenset(params)))
    hoisted = program.rows()[:program.first_per_run_step]
    assert hoisted and all(storage == ("const",) for r in hoisted for storage in [r.storage])
    assert set(program.constant_params) == set(params)
    # Constant values live outside the plan, which holds only what every run computes.
    assert not any(out in program.plan.storage_of
                   for s in program.steps[:program.first_per_run_step] for out in s.outputs)


def test_a_pass_list_that_reads_a_field_before_it_is_set_is_refused():
    swapped = list(pipeline.PASSES)
    lower = next(i for i, p in enumerate(swapped) if p.name == "lower")
    swapped[0], swapped[lower] = swapped[lower], swapped[0]  # lowering before shape inference
    with pytest.raises(RuntimeError, match="lower requires"):
        pipeline._check_passes(swapped)
    pipeline._check_passes(pipeline.PASSES)
