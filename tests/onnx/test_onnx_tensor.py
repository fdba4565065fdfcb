"""ONNX's tensor and shape operators (dlsys/onnx/ops_tensor.py, ops_tensor_parts.py): one
small model each, run by dlsys and compared with onnxruntime within 1e-4, including chains
of shape arithmetic that fold into constants when the graph is built."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from onnx_testing import assert_matches_onnxruntime, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402


def ints(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def node(op_type, inputs, outputs=("y",), **attrs):
    return helper.make_node(op_type, list(inputs), list(outputs), **attrs)


def const(name, value):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name, TensorProto.INT64 if value.dtype == np.int64 else TensorProto.FLOAT,
        value.shape, value.reshape(-1).tolist()))


# name -> () -> (a node or a list of nodes, inputs {name: shape}, outputs, initializers), as
# test_onnx_ops.CASES; one node where the case is one, so that tables of every op's cases
# (test_onnx_errors' rank checks) can use it. Each runs at OPSET unless NEWER names its own.
OPSET = 17
NEWER = {"split_num_outputs_uneven": 18, "pad_reflect_axes": 18}
CASES = {
    "concat_three_with_initializers": lambda: (
        node("Concat", ["a", "x", "b"], axis=-1), {"x": (2, 2, 3)}, {"y": None},
        {"a": normal((2, 2, 1), 1), "b": normal((2, 2, 2), 2)}),
    "split_sizes_input": lambda: (
        node("Split", ["x", "s"], ["y0", "y1", "y2"], axis=1), {"x": ("N", 6)},
        {"y0": None, "y1": None, "y2": None}, {"s": ints(1, 3, 2)}),
    "split_num_outputs_uneven": lambda: (
        node("Split", ["x"], ["y0", "y1"], axis=2, num_outputs=2), {"x": ("N", 2, 5)},
        {"y0": None, "y1": None}, {}),
    "slice_steps_and_negative_axes": lambda: (
        node("Slice", ["x", "st", "en", "ax", "sp"]), {"x": ("N", 5, 8)}, {"y": None},
        {"st": ints(-1, 1), "en": ints(-100, 9999), "ax": ints(1, -1), "sp": ints(-2, 3)}),
    "gather_scalar_index_cls_token": lambda: (
        [const("i", np.asarray(0, np.int64)), node("Gather", ["x", "i"], axis=1)],
        {"x": ("N", 4, 3)}, {"y": None}, {}),
    "gather_2d_indices_from_initializer_table": lambda: (
        node("Gather", ["x", "i"], axis=1), {"x": ("N", 5)}, {"y": None},
        {"i": ints(4, -1, 0, 2).reshape(2, 2)}),
    "gather_elements_negative_indices": lambda: (
        node("GatherElements", ["x", "i"], axis=1), {"x": (2, 4)}, {"y": None},
        {"i": ints(3, -1, 0, 0, 1, 2).reshape(2, 3)}),
    "unsqueeze_squeeze": lambda: (
        [node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u", "b"])],
        {"x": ("N", 3)}, {"y": None}, {"a": ints(1, -1), "b": ints(3)}),
    "expand_both_ways": lambda: (
        node("Expand", ["x", "s"]), {"x": ("N", 3, 1)}, {"y": None}, {"s": ints(2, 1, 1, 4)}),
    "tile": lambda: (node("Tile", ["x", "r"]), {"x": ("N", 2, 3)}, {"y": None},
                     {"r": ints(1, 2, 3)}),
    "pad_constant_value_and_negative": lambda: (
        node("Pad", ["x", "p", "v"], mode="constant"), {"x": ("N", 3, 4)}, {"y": None},
        {"p": ints(0, 1, -1, 0, 2, 2), "v": np.asarray(0.5, np.float32)}),
    "pad_reflect_axes": lambda: (
        node("Pad", ["x", "p", "", "a"], mode="reflect"), {"x": ("N", 3, 4, 5)},
        {"y": None}, {"p": ints(2, 1, 1, 3), "a": ints(-2, -1)}),
    "pad_edge": lambda: (node("Pad", ["x", "p"], mode="edge"), {"x": ("N", 2, 3)},
                         {"y": None}, {"p": ints(0, 2, 0, 0, 1, 3)}),
    "trilu_lower_with_k": lambda: (node("Trilu", ["x", "k"], upper=0), {"x": ("N", 3, 4)},
                                   {"y": None}, {"k": ints(1)}),
    "depth_to_space_crd": lambda: (node("DepthToSpace", ["x"], blocksize=2, mode="CRD"),
                                   {"x": ("N", 8, 2, 3)}, {"y": None}, {}),
    "space_to_depth": lambda: (node("SpaceToDepth", ["x"], blocksize=2),
                               {"x": ("N", 2, 4, 6)}, {"y": None}, {}),
    "cast_float_to_float_and_identity": lambda: (
        [node("Cast", ["x"], ["c"], to=TensorProto.FLOAT), node("Identity", ["c"])],
        {"x": ("N", 3)}, {"y": None}, {}),
    "cast_to_bool_and_back": lambda: (
        [node("Relu", ["x"], ["r"]), node("Cast", ["r"], ["b"], to=TensorProto.BOOL),
         node("Cast", ["b"], to=TensorProto.FLOAT)], {"x": ("N", 5)}, {"y": None}, {}),
    # An empty part (a rotary embedding's pass-through, the rotation covering the head):
    # an empty constant, which the concat leaves out.
    "split_empty_part_concat": lambda: (
        [node("Split", ["x", "s"], ["a", "b"], axis=1), node("Neg", ["a"], ["n"]),
         node("Concat", ["n", "b"], axis=1)],
        {"x": ("N", 4)}, {"y": None}, {"s": ints(4, 0)}),
    # Shape arithmetic on sizes dlsys knows: folded into the reshape's target.
    "shape_gather_concat_reshape_folds": lambda: (
        [node("Shape", ["x"], ["s"]), const("zero", ints(0)),
         node("Gather", ["s", "zero"], ["b"], axis=0), const("rest", ints(-1)),
         node("Concat", ["b", "rest"], ["t"], axis=0), node("Reshape", ["x", "t"])],
        {"x": (2, 3, 4)}, {"y": None}, {}),
    "shape_start_end_size_cast_fold": lambda: (
        [node("Shape", ["x"], ["s"], start=0, end=-1), const("one", ints(1)),
         node("Concat", ["s", "one"], ["s1"], axis=0), node("Size", ["x"], ["n"]),
         node("Cast", ["n"], ["f"], to=TensorProto.FLOAT),
         node("ConstantOfShape", ["s1"], ["c"], value=helper.make_tensor(
             "v", TensorProto.FLOAT, [1], [2.0])),
         node("Div", ["c", "f"], ["d"]), node("Concat", ["x", "d"], axis=2)],
        {"x": (2, 3, 4)}, {"y": (2, 3, 5)}, {}),
    # Pads computed from a shape: ONNX's shape inference loses the pad's sizes, which the
    # slice after it needs; dlsys's own shape rules give them.
    "pads_from_shape_then_slice": lambda: (
        [node("Shape", ["x"], ["s"]), const("i2", ints(2)), const("i3", ints(3)),
         node("Slice", ["s", "i2", "i3"], ["w"]), const("three", ints(3)),
         node("Sub", ["w", "three"], ["one"]), const("zero", ints(0)),
         node("Concat", ["zero", "zero", "one", "zero", "zero", "one"], ["p"], axis=0),
         node("Pad", ["x", "p"], ["padded"], mode="edge"), const("a", ints(2)),
         const("st", ints(1)), const("en", ints(-1)),
         node("Slice", ["padded", "st", "en", "a"])],
        {"x": (2, 3, 4)}, {"y": (2, 3, 4)}, {}),
    "range_indices_for_gather": lambda: (
        [const("a", np.asarray(3, np.int64)), const("b", np.asarray(-1, np.int64)),
         const("c", np.asarray(-1, np.int64)), node("Range", ["a", "b", "c"], ["r"]),
         node("Gather", ["x", "r"], axis=1)], {"x": ("N", 4)}, {"y": None}, {}),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_onnxruntime(case):
    nodes, inputs, outputs, initializers = CASES[case]()
    nodes = nodes if isinstance(nodes, list) else [nodes]
    proto = model(nodes, inputs, outputs, initializers, NEWER.get(case, OPSET))
    feeds = {name: normal(tuple(2 if isinstance(d, str) else d for d in shape), i)
             for i, (name, shape) in enumerate(inputs.items())}
    assert_matches_onnxruntime(proto, feeds)


@pytest.mark.parametrize("data, axis, ids", [
    (["N", 5, 3], 1, ints(4, 0, 1, 4).reshape(2, 2)),
    # ONNX's ids lie in [-n, n): a negative one counts from the end of the axis.
    (["N", 5, 3], 1, ints(-5, 0, -1, 4).reshape(2, 2)),
    ([5, 3], 0, ints(-1, 2, -5, 0).reshape(2, 2)),
])
def test_gather_of_fed_ids_is_an_embedding_lookup(data, axis, ids):
    module = pytest.importorskip("dlsys.onnx.importer").OnnxModule
    if not hasattr(module, "check_integer_inputs"):
        pytest.skip("this dlsys's InferenceSession takes float inputs only")
    from onnx import numpy_helper
    from onnx_testing import run_both

    taken = [*data[:axis], *ids.shape, *data[axis + 1:]]
    graph = helper.make_graph(
        [node("Gather", ["x", "ids"], axis=axis)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, data),
         helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, taken)],
        [numpy_helper.from_array(ints(0), "unused")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    shape = tuple(2 if isinstance(d, str) else d for d in data)
    ours, theirs = run_both(proto, {"x": normal(shape), "ids": ids})
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)


def test_integer_mask_cast_to_float_as_bert_exports_it():
    """``(1.0 - attention_mask[:, None, :].float()) * x``: the mask is fed as int64."""
    if not hasattr(pytest.importorskip("dlsys.onnx.importer").OnnxModule,
                   "check_integer_inputs"):
        pytest.skip("this dlsys's InferenceSession takes float inputs only")
    from onnx_testing import run_both

    graph = helper.make_graph(
        [const("axis", ints(1)), node("Unsqueeze", ["mask", "axis"], ["m"]),
         node("Cast", ["m"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Constant", [], ["one"], value_float=1.0),
         node("Sub", ["one", "f"], ["keep"]), node("Mul", ["keep", "x"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    mask = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], np.int64)
    ours, theirs = run_both(proto, {"x": normal((2, 3, 4)), "mask": mask})
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)


def test_a_shape_with_the_batch_unknown_reaches_a_reshape_as_its_free_size():
    """``x.view(x.size(0), 2, x.size(1) // 2, x.size(2))`` as exported with a free batch:
    Shape, Gather of its entries (the batch unknown, the rest known), Div, Unsqueeze,
    Concat and Cast carry the batch as unknown to the Reshape, which takes it as -1; the
    module built once runs at any batch."""
    from dlsys import autodiff as ad

    nodes = [node("Shape", ["x"], ["s"]), const("zero", ints(0)), const("two", ints(2)),
             const("half", np.asarray(2, np.int64)),
             node("Gather", ["s", "zero"], ["n"], axis=0),
             node("Slice", ["s", "two", "three"], ["tail"]),
             node("Gather", ["s", "one"], ["c"], axis=0), node("Div", ["c", "half"], ["c2"]),
             node("Unsqueeze", ["c2", "zero"], ["c2v"]),
             node("Concat", ["n", "two", "c2v", "tail"], ["target"], axis=0),
             node("Cast", ["target"], ["t64"], to=TensorProto.INT64),
             node("Reshape", ["x", "t64"])]
    proto = model(nodes, {"x": ("N", 4, 3)}, {"y": None},
                  {"one": np.asarray(1, np.int64), "three": ints(3)})
    module = donnx.import_model(proto)
    x = ad.Variable("x")
    executor = ad.Executor([module(x)])
    for batch in (1, 3):
        value = normal((batch, 4, 3), batch)
        got = executor.run({x: value}, convert_to_numpy_ret_vals=True)[0]
        np.testing.assert_array_equal(got, value.reshape(batch, 2, 2, 3))


@pytest.mark.parametrize("nodes, words", [
    ([node("Shape", ["x"], ["s"]), node("ConstantOfShape", ["s"])],
     "ConstantOfShape node 'y'.* the shape \\(\\?, 3\\), with a size unknown until run time"),
    # Two sizes unknown: the element count fixes one of them only.
    ([node("Shape", ["x"], ["s"]), node("Concat", ["s", "s"], ["t"], axis=0),
      node("Reshape", ["x", "t"])], "Reshape node 'y'.*target shape.*\\(\\?, 3, \\?, 3\\)"),
])
def test_a_shape_unknown_until_run_time_is_refused_where_it_cannot_be_carried(nodes, words):
    proto = model(nodes, {"x": ("N", 3)}, {"y": None})
    with pytest.raises(OnnxError, match=words):
        donnx.import_model(proto)


@pytest.mark.parametrize("nodes, initializers, words", [
    ([node("Pad", ["x", "p"], mode="wrap")], {"p": ints(0, 1, 0, 1)}, "mode 'wrap'"),
    ([node("Slice", ["x", "s", "e", "a"])], {"s": ints(2), "e": ints(2), "a": ints(1)},
     "is empty"),
    ([node("Gather", ["x", "i"], axis=1)], {"i": ints(3)}, "index 3 is out of range"),
])
def test_what_dlsys_cannot_do_is_refused_naming_the_node(nodes, initializers, words):
    proto = model(nodes, {"x": ("N", 3)}, {"y": None}, initializers)
    with pytest.raises(OnnxError, match=words) as caught:
        donnx.import_model(proto)
    assert "node 'y'" in str(caught.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_imported_tensor_ops_fine_tune_as_pytorch_differentiates():
    """Gradients through an exported model's Concat, Slice (a step, a flip), reflect Pad,
    Gather of fixed rows, Trilu, Tile and Expand: those of PyTorch for the same weights."""
    torch = pytest.importorskip("torch")
    import io

    from dlsys import autodiff as ad

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1, 2, 4, 5))
            self.table = torch.nn.Parameter(torch.randn(6, 5))
            self.register_buffer("rows", torch.tensor([5, 0, 2, 2]))

        def forward(self, x):
            y = torch.cat([x[:, :2], x[:, 1:] * self.w], 1)
            y = torch.nn.functional.pad(y, (2, 1, 1, 0), mode="reflect")[:, :, 1:, 2:-1]
            y = y.flip(-1) * torch.triu(self.table[self.rows], 1)
            return y.repeat(1, 1, 2, 1)[:, :, ::3]

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 3, 4, 5)
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], do_constant_folding=False)
    module = donnx.import_model(buffer.getvalue())
    module.train()
    upstream = normal(tuple(net(x).shape), 1)
    x_node, weight = ad.Variable("x"), ad.Variable("r")
    params = module.parameters()
    grads = ad.gradients(ad.sum_op(module(x_node) * weight), params)
    ours = ad.Executor(grads).run({x_node: x.numpy(), weight: upstream},
                                  convert_to_numpy_ret_vals=True)
    (net(x) * torch.from_numpy(upstream)).sum().backward()
    theirs = dict(net.named_parameters())
    assert sorted(p.name for p in params) == ["table", "w"]
    for p, grad in zip(params, ours):
        np.testing.assert_allclose(grad, theirs[p.name].grad.numpy(), rtol=1e-5, atol=1e-5)
