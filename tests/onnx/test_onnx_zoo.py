"""Real-world architectures through ONNX: torchvision's and transformers' models with seeded
random weights, exported by PyTorch's two exporters (dlsys.testing.zoo), run by dlsys and by
onnxruntime; and imported SqueezeNet, ResNet-18 (batch norms in training mode) and a tiny
GPT-2 fine-tuned by dlsys.optim as PyTorch fine-tunes them, loss for loss.

The smaller models of the zoo at small images, so that the file stays within about two
minutes on a quiet 2-core machine."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx_testing import TOLERANCE  # noqa: E402

import dlsys.onnx as donnx  # noqa: E402
from dlsys import autodiff as ad  # noqa: E402
from dlsys import optim  # noqa: E402
from dlsys.nn import functional as F  # noqa: E402
from dlsys.ops.reshape import reshape_op  # noqa: E402
from dlsys.testing import zoo  # noqa: E402


@pytest.fixture(scope="module")
def torchvision():
    try:
        return zoo.import_torchvision()
    except ImportError:
        pytest.skip("torchvision is not installed")


# (model, exporter, image side): each architecture at small images (each downsamples by
# 32: 32 x 32 leaves a 1 x 1 map). MobileNet v3 brings hard-swish and squeeze-excitation.
CASES = [("squeezenet1_1", "torchscript", 32), ("shufflenet_v2_x0_5", "dynamo", 32),
         ("resnet18", "dynamo", 32), ("mobilenet_v3_small", "torchscript", 32)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                            "ignore::FutureWarning")
@pytest.mark.parametrize("name,exporter,side", CASES)
def test_exported_model_matches_onnxruntime(tmp_path, torchvision, name, exporter, side):
    """The dynamo exporter's weights lie in an external .data file beside the model."""
    ours, theirs = _run_both(tmp_path, name, exporter, side)
    assert ours.shape == (1, 1000)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_shufflenet_with_a_free_batch_axis_imports_and_runs_at_another_batch(tmp_path,
                                                                             torchvision):
    """ShuffleNet v2's channel shuffle reshapes to ``(x.size(0), groups, ...)``: exported
    with a symbolic batch, that target holds a size unknown until run time, which
    ``import_model`` carries to the Reshape as its one free size. The imported module, built
    once, runs at a batch other than the example's."""
    path = zoo.export("shufflenet_v2_x0_5", tmp_path, "torchscript", side=32, free_batch=True)
    module = donnx.import_model(path)
    assert module.fixed_batch is None
    images = zoo.example_inputs("shufflenet_v2_x0_5", seed=1, batch=3, side=32)["x"]
    x = ad.Variable("x")
    ours = ad.Executor([module(x)]).run({x: images}, convert_to_numpy_ret_vals=True)[0]
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": images})[0]
    np.testing.assert_allclose(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE)


# The transformers at 2 layers, 2 heads, width 64 (32 for PyTorch's own encoder), 16 tokens.
TRANSFORMER_CASES = [("bert", "torchscript"), ("gpt2", "dynamo"),
                     ("transformer_encoder", "torchscript")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                            "ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name,exporter", TRANSFORMER_CASES)
def test_exported_transformer_matches_onnxruntime(tmp_path, name, exporter):
    """BERT's and GPT-2's token ids (int64) feed embedding lookups; their masks and
    positions come from Shape, Range, comparisons and Where folded or computed."""
    if name != "transformer_encoder":
        pytest.importorskip("transformers")
    _run_both(tmp_path, name, exporter, None)


def _run_both(tmp_path, name: str, exporter: str, side: int | None):
    """Model ``name`` exported, run by dlsys and by onnxruntime, compared; both outputs."""
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    path = zoo.export(name, tmp_path, exporter, side=side)
    assert (path.parent / (path.name + ".data")).is_file() == (exporter == "dynamo")
    feeds = zoo.example_inputs(name, seed=1, side=side)
    ours = donnx.InferenceSession(str(path)).run(None, feeds)[0]
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE)
    return ours, theirs


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_imported_squeezenet_fine_tunes_as_pytorch_does(tmp_path, torchvision):
    """Three SGD steps on three batches of 32 x 32 images: each step's loss is PyTorch's
    for the same weights and batches. The export drops the classifier's dropout (an
    inference graph), so PyTorch's runs with none either."""
    module = zoo.build("squeezenet1_1", seed=2)
    for layer in module.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    reference = copy.deepcopy(module)
    path = zoo.export("squeezenet1_1", tmp_path, "torchscript", module=module, side=32)
    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(4, 3, 32, 32)).astype(np.float32),
                rng.integers(0, 1000, 4)) for _ in range(3)]
    losses, _ = _fine_tune(donnx.import_model(path), batches, lr=0.01)
    expected = _fine_tune_torch(reference, batches, lr=0.01)
    np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-4)
    assert losses[0] != losses[1] != losses[2]  # the weights moved


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_imported_resnet18_fine_tunes_as_pytorch_does(tmp_path, torchvision):
    """ResNet-18 exported with its batch norms apart from the convolutions (``fold=False``),
    trained three SGD steps in training mode: the losses, the weights' updates and the
    batch norms' running statistics (ONNX's momentum 0.9 read as PyTorch's 0.1, the variance
    unbiased) follow PyTorch's. Images of 64 x 64, two a batch, and a small rate: at
    32 x 32 the last stage's batch norms see two numbers per channel, and at a rate of 0.01
    the third step's updates are chaotic; either way PyTorch's own float32 updates then
    differ from its float64 ones by percents."""
    module = zoo.build("resnet18", seed=2)
    reference = copy.deepcopy(module)
    path = zoo.export("resnet18", tmp_path, "torchscript", module=module, side=64,
                      fold=False)
    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(2, 3, 64, 64)).astype(np.float32),
                rng.integers(0, 1000, 2)) for _ in range(3)]
    imported = donnx.import_model(path)
    initial = imported.state_dict()
    losses, imported = _fine_tune(imported, batches, lr=0.001)
    expected = _fine_tune_torch(reference, batches, lr=0.001)
    np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-4)
    _assert_same_updates(initial, imported.state_dict(), reference.state_dict(), [
        "conv1.weight", "layer1.0.bn1.weight", "layer3.1.conv2.weight", "fc.bias",
        "bn1.running_mean", "layer2.0.downsample.1.running_var", "layer4.1.bn2.running_mean",
        "layer4.1.bn2.running_var"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                            "ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_imported_gpt2_fine_tunes_as_pytorch_does(tmp_path):
    """A tiny GPT-2 (``zoo.tiny_gpt2``) trained on the language model's loss: each of
    8 ids predicts the next, three SGD steps. Its token embedding is also its output
    projection (one initializer read by a Gather and a MatMul), so its gradient sums
    both uses, as PyTorch's tied weight's does."""
    pytest.importorskip("transformers")
    module = zoo.tiny_gpt2(seed=4)
    reference = copy.deepcopy(module)
    rng = np.random.default_rng(5)
    sequences = [rng.integers(0, zoo.TINY_VOCAB, size=(2, zoo.TINY_SEQUENCE + 1))
                 for _ in range(3)]
    batches = [(ids[:, :-1], ids[:, 1:]) for ids in sequences]
    path = zoo.export("gpt2", tmp_path, "torchscript", module=module, fold=False,
                      feeds={"input_ids": batches[0][0]})
    imported = donnx.import_model(path)
    initial = imported.state_dict()
    losses, imported = _fine_tune(imported, batches, lr=0.1)
    expected = _fine_tune_torch(reference, batches, lr=0.1)
    np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-4)
    _assert_same_updates(initial, imported.state_dict(), reference.state_dict(), [
        "model.transformer.wte.weight", "model.transformer.wpe.weight",
        "model.transformer.h.0.attn.c_attn.weight", "model.transformer.h.1.ln_2.bias",
        "model.transformer.ln_f.weight"])


def _fine_tune(imported, batches: list, lr: float) -> tuple[list[float], object]:
    """dlsys's loss at each of ``len(batches)`` SGD steps of the imported model in training
    mode, and the model: the cross-entropy of its outputs (the last axis the classes) and
    the integer labels of each (inputs, labels) batch."""
    x, labels = ad.Variable("x"), ad.Variable("labels")
    imported.train()
    outputs = imported(x)
    classes = imported.declared[imported.output_names[0]][0][-1]
    logits = reshape_op(outputs, (batches[0][1].size, classes))
    step = optim.SGD(imported.parameters(), lr=lr).minimize(F.cross_entropy(logits, labels))
    losses = [step({x: inputs, labels: targets.reshape(-1).astype(np.float32)})
              for inputs, targets in batches]
    return losses, imported


def _assert_same_updates(initial: dict, ours: dict, theirs: dict, names: list[str]) -> None:
    """Each named tensor moved from ``initial`` as PyTorch's did (``theirs``, its state
    dict): within 1e-3 of the largest change PyTorch made to it, which must not be 0."""
    for name in names:
        want = theirs[name].numpy() - initial[name]
        scale = np.abs(want).max()
        assert scale > 0, f"{name} did not move"
        np.testing.assert_allclose(ours[name] - initial[name], want, rtol=0, atol=1e-3 * scale,
                                   err_msg=name)


def _fine_tune_torch(module, batches: list, lr: float) -> list[float]:
    """PyTorch's loss at each SGD step of ``module``, trained as ``_fine_tune`` trains."""
    module.train()
    sgd = torch.optim.SGD(module.parameters(), lr=lr)
    losses = []
    for inputs, targets in batches:
        sgd.zero_grad()
        outputs = module(torch.from_numpy(inputs))
        loss = torch.nn.functional.cross_entropy(outputs.reshape(targets.size, -1),
                                                 torch.from_numpy(targets.reshape(-1)))
        loss.backward()
        sgd.step()
        losses.append(loss.item())
    return losses
