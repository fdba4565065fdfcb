"""Well-known architectures exported to ONNX, for tests and benchmarks only (dlsys never
imports PyTorch, torchvision or transformers on its own paths).

Each model of :data:`MODELS` is built with seeded random weights (nothing is downloaded:
torchvision's models without ``weights``, transformers' from a small config) and written
by ``torch.onnx.export`` with either exporter:

- ``"torchscript"`` (``dynamo=False``, opset 17): one file, weights inside;
- ``"dynamo"`` (PyTorch's default, needs onnxscript; opset 18): the weights in an external
  ``.data`` file beside the model, as ``dlsys.onnx`` reads them (``dlsys/onnx/external.py``).

torchvision's wheel on PyPI is a CUDA build whose compiled operators do not load beside
PyTorch's CPU build; its Python half imports anyway once the two operators its import
registers fake kernels for exist (:func:`import_torchvision`). No model here calls them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPSET = 17
# The default exporter writes opset 18 (its oldest), and converting down to 17 breaks some
# graphs (a Split keeps opset 18's num_outputs): its models stay at 18.
DYNAMO_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
# Images as small as every architecture below takes (each downsamples by 32 at most).
IMAGE_SIDE = 64
# The transformers' sequence length and their size: 2 layers, 2 heads, vocabulary 100.
SEQUENCE = 16
VOCAB = 100
HIDDEN = 64
# The tiny GPT-2 that tests fine-tune (``tiny_gpt2``): its vocabulary and sequence length.
TINY_VOCAB = 64
TINY_SEQUENCE = 8


def import_torchvision():
    """torchvision, importable beside PyTorch's CPU build; ImportError where it is not
    installed.

    Its import registers fake (meta) kernels for ``torchvision::nms`` and ``qnms``, which
    fails where its compiled library did not load and so never defined them: they are
    defined here first, with a plain PyTorch ``nms``, and the half-imported package is
    imported again."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _define_torchvision_stand_ins()
    return importlib.import_module("torchvision")


_STAND_INS: list = []  # the torch.library.Library holding the stand-ins, kept alive


def _define_torchvision_stand_ins() -> None:
    import torch

    if _STAND_INS:
        return
    library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", _nms, "CPU")
    _STAND_INS.append(library)


def _nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression (torchvision.ops.nms): the indices of the boxes kept,
    best score first; a box is dropped when it overlaps a kept one by more than the
    threshold (intersection over union)."""
    import torch

    order = torch.argsort(scores, descending=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    kept = []
    while order.numel():
        best, order = order[0], order[1:]
        kept.append(best)
        width = (torch.minimum(x2[order], x2[best]) - torch.maximum(x1[order], x1[best]))
        height = (torch.minimum(y2[order], y2[best]) - torch.maximum(y1[order], y1[best]))
        overlap = width.clamp(min=0) * height.clamp(min=0)
        iou = overlap / (areas[order] + areas[best] - overlap)
        order = order[iou <= iou_threshold]
    return torch.stack(kept) if kept else torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True)
class ZooModel:
    """How to build one architecture (``build()`` gives a ``torch.nn.Module``) and what it
    takes: ``"image"`` (float images 1 x 3 x side x side) or ``"tokens"`` (int64 ids
    1 x SEQUENCE) or ``"sequence"`` (float 1 x SEQUENCE x 32)."""

    build: Callable[[], object]
    takes: str
    side: int = IMAGE_SIDE


def _torchvision_model(name: str, **kwargs) -> Callable[[], object]:
    def build():
        return getattr(import_torchvision().models, name)(weights=None, **kwargs)
    return build


class _FirstOutput:
    """Wraps a transformers model so that it returns its first output as one tensor (the
    exporters want tensors, not its output classes). Its attention mask is all ones, given:
    without one, transformers looks for packed sequences with an operator (``diff``) that
    the TorchScript exporter does not write."""

    def __new__(cls, model):
        import torch

        class FirstOutput(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids):
                mask = torch.ones_like(input_ids)
                return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False,
                                  return_dict=False)[0]

        return FirstOutput()


def _import_transformers():
    """transformers, after torchvision where that is installed: some of transformers' models
    import it, and it imports only once its stand-ins exist."""
    try:
        import_torchvision()
    except ImportError:
        pass
    return importlib.import_module("transformers")


def _bert():
    _import_transformers()
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * HIDDEN,
                        max_position_embeddings=2 * SEQUENCE, attn_implementation="eager")
    return _FirstOutput(BertModel(config))


def _gpt2():
    _import_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=2,
                        n_positions=2 * SEQUENCE, bos_token_id=0, eos_token_id=0,
                        attn_implementation="eager")
    return _FirstOutput(GPT2LMHeadModel(config))


def tiny_gpt2(seed: int = 0):
    """A GPT-2 language model (returning its logits) small enough to fine-tune in a test:
    2 layers, 2 heads, width 32, vocabulary :data:`TINY_VOCAB`, no dropout, in eval mode.
    Its weights are drawn from ``seed`` and no two of its tensors are equal (see
    :func:`distinct_weights`), so that an exported file holds each of them once."""
    import torch

    _import_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=TINY_VOCAB, n_embd=32, n_layer=2, n_head=2,
                        n_positions=2 * TINY_SEQUENCE, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        attn_implementation="eager")
    module = _FirstOutput(GPT2LMHeadModel(config))
    distinct_weights(module, torch.Generator().manual_seed(seed))
    return module.eval()


def distinct_weights(module, generator) -> None:
    """Every parameter of ``module`` that holds one number throughout (a fresh layer norm's
    ones, a bias's zeros) gets small noise about it. The TorchScript exporter writes equal
    tensors as one initializer, which would tie those parameters together in the file: an
    imported model would then train them as one where PyTorch trains each."""
    import torch

    with torch.no_grad():
        for param in module.parameters():
            if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
                param.add_(torch.rand(param.shape, generator=generator) * 0.2 - 0.1)


def _transformer_encoder():
    import torch

    layer = torch.nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0,
                                             batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


MODELS: dict[str, ZooModel] = {
    "resnet18": ZooModel(_torchvision_model("resnet18"), "image"),
    "mobilenet_v2": ZooModel(_torchvision_model("mobilenet_v2"), "image"),
    "mobilenet_v3_small": ZooModel(_torchvision_model("mobilenet_v3_small"), "image"),
    "squeezenet1_1": ZooModel(_torchvision_model("squeezenet1_1"), "image"),
    "shufflenet_v2_x0_5": ZooModel(_torchvision_model("shufflenet_v2_x0_5"), "image"),
    "efficientnet_b0": ZooModel(_torchvision_model("efficientnet_b0"), "image"),
    "densenet121": ZooModel(_torchvision_model("densenet121"), "image"),
    "googlenet": ZooModel(_torchvision_model("googlenet", aux_logits=False,
                                             init_weights=True), "image"),
    "regnet_y_400mf": ZooModel(_torchvision_model("regnet_y_400mf"), "image"),
    "resnet50": ZooModel(_torchvision_model("resnet50"), "image"),
    "bert": ZooModel(_bert, "tokens"),
    "gpt2": ZooModel(_gpt2, "tokens"),
    "transformer_encoder": ZooModel(_transformer_encoder, "sequence"),
}


def _randomise_batch_norms(module, generator) -> None:
    """Batch norms other than the identity (running mean 0, variance 1, scale 1, shift 0
    at construction), so that a converter folding them wrongly shows; and each unlike the
    others: the TorchScript exporter stores equal initializers once, which would tie the
    layers' parameters together in the file."""
    import torch

    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            shape = layer.running_mean.shape
            with torch.no_grad():
                layer.running_mean.copy_(torch.rand(shape, generator=generator) * 0.2 - 0.1)
                layer.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
                if layer.affine:
                    layer.weight.copy_(torch.rand(shape, generator=generator) * 0.5 + 0.75)
                    layer.bias.copy_(torch.rand(shape, generator=generator) * 0.2 - 0.1)


def build(name: str, seed: int = 0):
    """Model ``name`` of :data:`MODELS` in eval mode, its weights drawn from ``seed``."""
    import torch

    if name not in MODELS:
        raise KeyError(f"no model {name!r} in the zoo; it has {', '.join(MODELS)}")
    torch.manual_seed(seed)
    module = MODELS[name].build()
    _randomise_batch_norms(module, torch.Generator().manual_seed(seed))
    return module.eval()


def example_inputs(name: str, seed: int = 0, batch: int = 1,
                   side: int | None = None) -> dict[str, np.ndarray]:
    """Feeds for model ``name``, by input name: images of normal noise (``side`` pixels
    square, the model's ``IMAGE_SIDE`` unless told), token ids, or a sequence of feature
    vectors."""
    spec = MODELS[name]
    rng = np.random.default_rng(seed)
    if spec.takes == "image":
        side = side or spec.side
        return {"x": rng.normal(size=(batch, 3, side, side)).astype(np.float32)}
    if spec.takes == "tokens":
        return {"input_ids": rng.integers(0, VOCAB, size=(batch, SEQUENCE), dtype=np.int64)}
    return {"x": rng.normal(size=(batch, SEQUENCE, 32)).astype(np.float32)}


def export(name: str, folder: Path, exporter: str = "torchscript", seed: int = 0,
           module=None, side: int | None = None, fold: bool = True,
           feeds: dict[str, np.ndarray] | None = None, free_batch: bool = False) -> Path:
    """Write model ``name`` (or ``module``, built as :func:`build` does, to export a given
    set of weights) to ``folder/<name>-<exporter>.onnx`` and return that path; the dynamo
    exporter writes its weights to a ``.data`` file beside it. The example input (which
    fixes the batch at 1) has ``side`` pixels square where given. ``fold=False`` keeps the
    TorchScript exporter from folding batch norms into the convolutions before them, so
    that the file's parameters are the module's (for fine-tuning as PyTorch does).
    ``feeds`` (input name -> example value) replaces the model's example inputs: for a
    ``module`` that takes other shapes than model ``name`` (``tiny_gpt2``'s ids).
    ``free_batch`` writes the inputs' and the output's first axis as a symbolic size
    ``"N"`` (the TorchScript exporter's ``dynamic_axes``), where the default fixes it."""
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: one of {', '.join(EXPORTERS)}")
    module = build(name, seed) if module is None else module
    feeds = example_inputs(name, seed, side=side) if feeds is None else feeds
    args = tuple(torch.from_numpy(a) for a in feeds.values())
    path = Path(folder) / f"{name}-{exporter}.onnx"
    options = {"input_names": list(feeds), "output_names": ["y"],
               "opset_version": OPSET if exporter == "torchscript" else DYNAMO_OPSET}
    if free_batch:
        if exporter != "torchscript":
            raise ValueError("free_batch: zoo.export frees the batch with the TorchScript "
                             "exporter's dynamic_axes only")
        options["dynamic_axes"] = {name: {0: "N"} for name in (*feeds, "y")}
    # The fast path of PyTorch's attention layers runs one fused operator that no ONNX
    # exporter writes out; off, they run (and export) as their parts.
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export(module, args, path, exporter, options, fold)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return path


def _export(module, args: tuple, path: Path, exporter: str, options: dict,
            fold: bool) -> None:
    import torch

    with torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), dynamo=False,
                              do_constant_folding=fold, **options)
        else:
            torch.onnx.export(module, args, str(path), dynamo=True, external_data=True,
                              verbose=False, **options)
