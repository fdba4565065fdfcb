"""ONNX's Einsum (dlsys/onnx/ops_einsum.py): the contractions models write, run by dlsys
and compared with onnxruntime within 1e-4; their gradients against PyTorch's einsum; the
equations dlsys cannot lower refused naming the node and the equation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_testing import assert_matches_onnxruntime, model, normal  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys.onnx.reader import OnnxError  # noqa: E402

# equation -> the operands' declared shapes ("N": a batch left symbolic, fed as 2).
CASES = {
    "bhqd,bhkd->bhqk": [("N", 2, 3, 4), ("N", 2, 5, 4)],  # attention's scores
    "bhqk,bhkd->bhqd": [("N", 2, 3, 5), ("N", 2, 5, 4)],  # attention's weighted values
    "bij, bjk -> bik": [("N", 3, 4), ("N", 4, 2)],
    "ij,jk": [(3, 4), (4, 5)],  # implicit output: "ik"
    "bi,bi->b": [("N", 4), ("N", 4)],
    "ij->ji": [(3, 4)],
    "ij->i": [("N", 4)],
    "i,j->ij": [(3,), (4,)],
    "ii->i": [(4, 4)],
    "...ij,...jk->...ik": [(2, 1, 3, 4), (1, 3, 4, 2)],  # broadcast batch axes
    "ij,jk,kl->il": [(2, 3), (3, 4), (4, 2)],
    "bnd,d->bn": [("N", 3, 4), (4,)],
}
FEED = {"N": 2}


def einsum_model(equation: str, shapes):
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation)
    return model([node], dict(zip(names, shapes)), {"y": None}), names


def feeds_for(names, shapes) -> dict:
    return {name: normal(tuple(FEED.get(d, d) for d in shape), seed)
            for seed, (name, shape) in enumerate(zip(names, shapes))}


@pytest.mark.parametrize("equation", CASES)
def test_einsum_matches_onnxruntime(equation):
    proto, names = einsum_model(equation, CASES[equation])
    assert_matches_onnxruntime(proto, feeds_for(names, CASES[equation]))


def test_attention_scores_are_one_product_with_no_copy():
    """``bhqd,bhkd->bhqk`` is ``Q @ K^T`` as one batched product: the transpose is the
    product's flag, not a copy of K."""
    proto, names = einsum_model("bhqd,bhkd->bhqk", CASES["bhqd,bhkd->bhqk"])
    y = donnx.import_model(proto)(*[ad.Variable(n) for n in names])
    assert y.op.name == "MatMul" and y.attrs["trans_B"]
    assert all(i.op.name == "Placeholder" for i in y.inputs)


@pytest.mark.parametrize("equation", ["bhqk,bhkd->bhqd", "...ij,...jk->...ik", "ii->i",
                                      "i,j->ij"])
def test_einsum_gradients_match_pytorch(equation):
    torch = pytest.importorskip("torch")
    shapes = CASES[equation]
    proto, names = einsum_model(equation, shapes)
    values = feeds_for(names, shapes)
    inputs = [ad.Variable(n) for n in names]
    y = donnx.import_model(proto).train()(*inputs)
    grads = ad.gradients(ad.sum_op(y * y), inputs)
    ours = ad.Executor(grads).run(dict(zip(inputs, values.values())),
                                  convert_to_numpy_ret_vals=True)
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True)
               for v in values.values()]
    torch.einsum(equation.replace(" ", ""), *tensors).pow(2).sum().backward()
    for mine, reference in zip(ours, tensors):
        np.testing.assert_allclose(mine, reference.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_constant_operands_fold():
    """Einsum of constants is computed when the graph is built: a reshape's target here."""
    from onnx import TensorProto

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, TensorProto.INT64, value.shape, value.reshape(-1).tolist()))

    nodes = [const("a", np.array([[1, 2], [3, 4]], np.int64)),
             const("b", np.array([1, 1], np.int64)),
             helper.make_node("Einsum", ["a", "b"], ["s"], equation="ij,j->i"),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    proto = model(nodes, {"x": (3, 7)}, {"y": (3, 7)})
    assert_matches_onnxruntime(proto, {"x": normal((3, 7))})


@pytest.mark.parametrize("equation,shapes,message", [
    ("ij,jk->ikk", [(2, 3), (3, 4)], "more than once"),
    ("ij,jk->iz", [(2, 3), (3, 4)], "'z' is in no operand"),
    ("ij,kj->ik", [(2, 3), (4, 5)], "label 'j' has sizes"),
    ("ij->j", [(2, 3, 4)], "do not match its rank 3"),
    ("ij,j->i", [(2, 3)], "names 2 operand"),
])
def test_einsum_refusals_name_node_and_equation(equation, shapes, message):
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation, name="mix")
    from onnx import TensorProto

    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                      for n, s in zip(names, shapes)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    with pytest.raises(OnnxError, match=message) as err:
        donnx.import_model(proto)
    assert "Einsum node 'mix'" in str(err.value) and repr(equation) in str(err.value)
