"""The fusion pass: which steps it merges, and that fused graphs compute what unfused ones do."""

import numpy as np
import pytest

from dlsys import autodiff as ad
from dlsys import nn, tvm_op
from dlsys.kernels.build import empty, to_tensor
from dlsys.passes.fusion import fuse_absorbed_siblings, fuse_epilogues
from dlsys.passes.lower import Step, build_steps
from dlsys.passes.shape_inference import infer_shapes


def mlp_graph(dims=(20, 16, 12, 5)):
    x, labels = ad.Variable("x"), ad.Variable("y_")
    weights = [ad.Variable(f"W{i}") for i in range(len(dims) - 1)]
    biases = [ad.Variable(f"b{i}") for i in range(len(dims) - 1)]
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        z = ad.matmul_op(h, w)
        z = z + ad.broadcastto_op(b, z)
        h = ad.relu_op(z) if i < len(weights) - 1 else z
    loss = ad.softmaxcrossentropy_op(h, labels)
    grads = ad.gradients(loss, weights + biases)
    return x, labels, weights, biases, loss, grads, h


def mlp_feeds(x, labels, weights, biases, dims=(20, 16, 12, 5), batch=9, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {x: rng.standard_normal((batch, dims[0])).astype("float32"),
             labels: np.eye(dims[-1], dtype="float32")[rng.integers(0, dims[-1], batch)]}
    for i, (w, b) in enumerate(zip(weights, biases)):
        feeds[w] = (rng.standard_normal((dims[i], dims[i + 1])) * 0.3).astype("float32")
        feeds[b] = rng.standard_normal(dims[i + 1]).astype("float32")
    return feeds


def fused_steps(eval_nodes, feeds):
    order = ad.find_topo_sort(eval_nodes)
    shapes = infer_shapes(order, {p: np.shape(v) for p, v in feeds.items()})
    return fuse_epilogues(build_steps(order, shapes), shapes, set(eval_nodes))


def assert_fusion_keeps_values(eval_nodes, feeds, dtype):
    """Every value asked for is the same fused as unfused (float rounding aside)."""
    got = ad.Executor(eval_nodes, dtype=dtype).run(feeds, convert_to_numpy_ret_vals=True)
    want = ad.Executor(eval_nodes, fuse=False, dtype=dtype).run(feeds,
                                                                convert_to_numpy_ret_vals=True)
    for g, expected, node in zip(got, want, eval_nodes):
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-5, err_msg=node.name)


def test_mlp_training_graph_fuses_forward_and_relu_gradients():
    x, labels, weights, biases, loss, grads, logits = mlp_graph()
    feeds = mlp_feeds(x, labels, weights, biases)
    steps = fused_steps([loss, *grads, logits], feeds)
    epilogues = sorted(s.epilogue for s in steps if s.anchor is not None)
    # Two hidden layers (bias + relu), the logits (bias), two relu-gradient masks.
    assert epilogues == sorted([(("bias_add",), ("relu",))] * 2 + [(("bias_add",),)]
                               + [(("relu_mask",),)] * 2)
    # The bias broadcasts are read as vectors by the fused kernels, so no step computes them.
    assert not any(s.output.op.name == "BroadcastTo" for s in steps)
    # The loss is computed by its gradient's kernel, as a second output.
    (pair,) = [s for s in steps if s.extra_outputs]
    assert pair.output.op.name == "SoftmaxXEntropyGrad" and pair.extra_outputs == (loss,)
    assert not any(s.output is loss for s in steps)


def test_loss_stays_apart_when_a_step_between_reads_it():
    logits, labels, upstream = ad.Variable("y"), ad.Variable("t"), ad.Variable("g")
    loss = ad.softmaxcrossentropy_op(logits, labels)
    reader = loss * 2.0
    grad = ad.softmaxcrossentropy_gradient_op(logits, labels, upstream)
    steps = [Step(loss, (logits, labels)), Step(reader, (loss,)),
             Step(grad, (logits, labels, upstream))]
    shapes = {logits: (4, 3), labels: (4, 3), upstream: (1,), loss: (1,), reader: (1,),
              grad: (4, 3)}
    assert fuse_absorbed_siblings(steps, shapes) == steps
    fused = fuse_absorbed_siblings([steps[0], steps[2], steps[1]], shapes)
    assert [s.outputs for s in fused] == [(grad, loss), (reader,)]


def test_fused_and_unfused_runs_agree_exactly():
    x, labels, weights, biases, loss, grads, logits = mlp_graph()
    feeds = mlp_feeds(x, labels, weights, biases)
    eval_nodes = [loss, *grads, logits]
    fused = ad.Executor(eval_nodes)
    unfused = ad.Executor(eval_nodes, fuse=False)
    got = fused.run(feeds, convert_to_numpy_ret_vals=True)
    want = unfused.run(feeds, convert_to_numpy_ret_vals=True)
    assert fused.kernel_calls < unfused.kernel_calls
    for g, w, node in zip(got, want, eval_nodes):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=node.name)


def test_values_asked_for_are_not_fused_away():
    x, w, b = ad.Variable("x"), ad.Variable("w"), ad.Variable("b")
    product = ad.matmul_op(x, w)
    pre_activation = product + ad.broadcastto_op(b, product)
    out = ad.relu_op(pre_activation) * 3.0
    rng = np.random.default_rng(2)
    feeds = {x: rng.standard_normal((6, 4)).astype("float32"),
             w: rng.standard_normal((4, 5)).astype("float32"),
             b: rng.standard_normal(5).astype("float32")}
    steps = fused_steps([out, pre_activation], feeds)
    assert any(s.output is pre_activation for s in steps)
    got_out, got_pre = ad.Executor([out, pre_activation]).run(feeds,
                                                             convert_to_numpy_ret_vals=True)
    expected = feeds[x] @ feeds[w] + feeds[b]
    np.testing.assert_allclose(got_pre, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_out, np.maximum(expected, 0) * 3.0, rtol=1e-5, atol=1e-5)


def test_a_matmul_read_twice_is_not_fused():
    a, b = ad.Variable("a"), ad.Variable("b")
    product = ad.matmul_op(a, b)
    out_1, out_2 = ad.relu_op(product), product * 2.0
    feeds = {a: np.ones((3, 4), "float32"), b: np.ones((4, 5), "float32")}
    steps = fused_steps([out_1, out_2], feeds)
    assert all(s.anchor is None for s in steps)


@pytest.mark.parametrize("epilogue", [
    [("bias_add",)], [("relu",)], [("add",)], [("relu_mask",)], [("add_const", 1.5)],
    [("mul_const", -2.0)], [("bias_add",), ("relu",), ("mul_const", 0.5)],
])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_epilogue_kernels_match_numpy(epilogue, trans_a, trans_b):
    rng = np.random.default_rng(1)
    m, k, n = 13, 7, 19
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype("float32")
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype("float32")
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    operands = []
    for kind, *extra in epilogue:
        if kind == "bias_add":
            operands.append(rng.standard_normal(n).astype("float32"))
            expected = expected + operands[-1]
        elif kind == "add":
            operands.append(rng.standard_normal((m, n)).astype("float32"))
            expected = expected + operands[-1]
        elif kind == "relu_mask":
            operands.append(rng.standard_normal((m, n)).astype("float32"))
            expected = np.where(operands[-1] > 0, expected, 0)
        elif kind == "relu":
            expected = np.maximum(expected, 0)
        elif kind == "add_const":
            expected = expected + extra[0]
        else:
            expected = expected * extra[0]
    kernel = tvm_op.make_matmul_epilogue(a.shape, trans_a, b.shape, trans_b, epilogue, "llvm",
                                         "llvm", "fused")
    out = empty((m, n))
    kernel(to_tensor(a), to_tensor(b), *map(to_tensor, operands), out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_unknown_epilogue_step_is_rejected():
    with pytest.raises(ValueError, match="epilogue step"):
        tvm_op.make_matmul_epilogue((2, 3), False, (3, 4), False, [("tanh",)], "llvm", "llvm",
                                    "f")


def test_relu_gradient_never_reads_a_relu_scheduled_after_it():
    # The rewrite to relu(W) > 0 is sound only where the relu is already computed: here it is
    # asked for after the gradient, so the gradient must keep reading W itself.
    w, g = ad.Variable("W"), ad.Variable("g")
    mask_grad, relu = ad.relu_gradient_op(w, g), ad.relu_op(w)
    executor = ad.Executor([mask_grad, relu])
    rng = np.random.default_rng(0)
    for _ in range(2):  # the second run would see the first run's relu
        w_val = rng.standard_normal((7, 5)).astype("float32")
        g_val = rng.standard_normal((7, 5)).astype("float32")
        got, relu_out = executor.run({w: w_val, g: g_val}, convert_to_numpy_ret_vals=True)
        np.testing.assert_array_equal(got, (w_val > 0) * g_val)
        np.testing.assert_array_equal(relu_out, np.maximum(w_val, 0))


def test_order_check_catches_a_step_that_reads_a_later_value():
    from dlsys.passes.memory_plan import order_problems

    a = ad.Variable("a")
    b = ad.relu_op(a)
    c = ad.relu_op(b)
    steps = [Step(c, (b,)), Step(b, (a,))]
    (problem,) = order_problems(steps)
    assert c.name in problem and b.name in problem


@pytest.mark.parametrize("bias_form", ["reshape", "broadcast"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_convolution_bias_and_relu_run_in_one_kernel(bias_form, dtype):
    # LeNet's layer as dlsys.nn writes it (a (C, 1, 1) bias added with broadcasting), and
    # with the bias broadcast explicitly: one kernel, the same values as unfused, and the
    # relu gradient of the training graph still reads a value that exists.
    x, w, b = ad.Variable("x"), ad.Variable("w"), ad.Variable("b")
    conv = ad.conv2d_op(x, w, stride=(2, 1), padding=1)
    bias = ad.reshape_op(b, (5, 1, 1))
    if bias_form == "broadcast":
        bias = ad.broadcastto_op(bias, conv)
    out = ad.relu_op(conv + bias)
    loss = ad.sum_op(out * out)
    rng = np.random.default_rng(3)
    feeds = {x: rng.standard_normal((3, 2, 9, 7)).astype(dtype),
             w: rng.standard_normal((5, 2, 3, 3)).astype(dtype),
             b: rng.standard_normal(5).astype(dtype)}
    eval_nodes = [out, *ad.gradients(loss, [x, w, b])]
    steps = fused_steps(eval_nodes, feeds)
    (fused,) = [s for s in steps if s.anchor is conv]
    assert fused.epilogue == (("channel_bias_add",), ("relu",))
    assert fused.kernel.kind == "conv2d_epilogue"
    assert_fusion_keeps_values(eval_nodes, feeds, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_gradient_runs_in_the_max_pool_gradient_kernel(dtype):
    # conv -> relu -> max pool, taken back: the relu's mask is applied as the pooling
    # gradient is written, and the values are those of the unfused graph.
    x, w = ad.Variable("x"), ad.Variable("w")
    pooled = ad.maxpool2d_op(ad.relu_op(ad.conv2d_op(x, w, padding=1)), 2)
    loss = ad.sum_op(pooled * pooled)
    rng = np.random.default_rng(4)
    feeds = {x: rng.standard_normal((2, 3, 9, 8)).astype(dtype),
             w: rng.standard_normal((4, 3, 3, 3)).astype(dtype)}
    eval_nodes = [loss, *ad.gradients(loss, [x, w])]
    steps = fused_steps(eval_nodes, feeds)
    (pool_grad,) = [s for s in steps if s.anchor is not None
                    and s.anchor.op is ad.maxpool2d_grad_op]
    assert pool_grad.epilogue == (("relu_mask",),)
    assert_fusion_keeps_values(eval_nodes, feeds, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_gradient_runs_in_the_convolution_input_gradient_kernel(dtype):
    # conv -> relu -> conv, taken back: the first relu's mask is applied as the second
    # convolution's input gradient is written.
    x, w1, w2 = ad.Variable("x"), ad.Variable("w1"), ad.Variable("w2")
    top = ad.conv2d_op(ad.relu_op(ad.conv2d_op(x, w1, padding=1)), w2, stride=2, padding=1)
    loss = ad.sum_op(top * top)
    rng = np.random.default_rng(5)
    feeds = {x: rng.standard_normal((2, 3, 9, 8)).astype(dtype),
             w1: rng.standard_normal((4, 3, 3, 3)).astype(dtype),
             w2: rng.standard_normal((5, 4, 3, 3)).astype(dtype)}
    eval_nodes = [loss, *ad.gradients(loss, [x, w1, w2])]
    steps = fused_steps(eval_nodes, feeds)
    (fused,) = [s for s in steps if s.anchor is not None
                and s.anchor.op is ad.conv2d_grad_input_op and s.epilogue]
    assert fused.epilogue == (("relu_mask",),)
    assert_fusion_keeps_values(eval_nodes, feeds, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_and_relu_run_in_one_kernel(dtype):
    # The cnn model's block, conv -> batch norm -> relu -> max pool, in training: the relu
    # runs in the batch norm's output loop, the backward pass recomputes x_hat from the
    # convolution's output instead of reading a normalised copy, and every value is the
    # unfused graph's.
    x, w, gamma, beta = (ad.Variable(name) for name in ("x", "w", "gamma", "beta"))
    running = [nn.Parameter(np.zeros(4, dtype), "mean"), nn.Parameter(np.ones(4, dtype), "var")]
    conv = ad.conv2d_op(x, w, padding=1)
    normed = ad.batchnorm2d_op(conv, gamma, beta, *running)
    pooled = ad.maxpool2d_op(ad.relu_op(normed), 2)
    loss = ad.sum_op(pooled * pooled)
    rng = np.random.default_rng(6)
    feeds = {x: rng.standard_normal((3, 2, 8, 6)).astype(dtype),
             w: rng.standard_normal((4, 2, 3, 3)).astype(dtype),
             gamma: rng.standard_normal(4).astype(dtype),
             beta: rng.standard_normal(4).astype(dtype)}
    eval_nodes = [pooled, *ad.gradients(loss, [x, w, gamma, beta])]
    steps = fused_steps(eval_nodes, {**feeds, **{p: p.numpy() for p in running}})
    (fused,) = [s for s in steps if s.anchor is normed]
    assert fused.epilogue == (("relu",),)
    assert fused.kernel.kind == "batchnorm_affine_epilogue"
    assert not any(normed in s.inputs for s in steps)  # it lives only inside that kernel
    assert_fusion_keeps_values(eval_nodes, feeds, dtype)
