"""``export``: a ``dlsys.nn`` model (a tree of Sequentials over dlsys's layers) as an ONNX file
that any runtime serves, with the layers' PyTorch names on its initializers."""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dlsys.errors import ArgumentTypeError, DataError, ShapeError
from dlsys.graph import find_topo_sort
from dlsys.nn.module import Module, Sequential
from dlsys.onnx.importer import OnnxModule
from dlsys.onnx.reader import CLASS_NAMES_KEY, require_onnx
from dlsys.ops.placeholder import Variable
from dlsys.passes.shape_inference import infer_shapes

OPSET = 17  # what onnxruntime releases of the last two years all run
IR_VERSION = 8  # the IR of opset 17
BATCH = "batch"  # the symbolic first dimension of the input and output


class _Builder:
    """The nodes and initializers written so far; each layer adds its own."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []

    def weight(self, name: str, value) -> str:
        self.initializers.append(self.numpy_helper.from_array(
            np.ascontiguousarray(value.numpy(), dtype=np.float32), name))
        return name

    def node(self, op_type: str, inputs: list[str], path: str, **attrs) -> str:
        output = f"{path}/{op_type}" if path else op_type
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def _linear(b: _Builder, layer, x: str, path: str) -> str:
    inputs = [x, b.weight(f"{path}.weight", layer.weight)]
    if layer.bias is not None:
        inputs.append(b.weight(f"{path}.bias", layer.bias))
    return b.node("Gemm", inputs, path, transB=1)


def _activation(op_type: str) -> Callable:
    return lambda b, layer, x, path: b.node(op_type, [x], path)


def _batch_norm(b: _Builder, layer, x: str, path: str) -> str:
    names = ("weight", "bias", "running_mean", "running_var")
    inputs = [x] + [b.weight(f"{path}.{n}", getattr(layer, n)) for n in names]
    # ONNX weighs the running statistic by its momentum, PyTorch and dlsys the batch's.
    return b.node("BatchNormalization", inputs, path, epsilon=layer.eps,
                  momentum=1.0 - layer.momentum)


def _pads(padding) -> list[int]:
    return [padding[0], padding[1], padding[0], padding[1]]


def _conv(b: _Builder, layer, x: str, path: str) -> str:
    inputs = [x, b.weight(f"{path}.weight", layer.weight)]
    if layer.bias is not None:
        inputs.append(b.weight(f"{path}.bias", layer.bias))
    return b.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), pads=_pads(layer.padding))


def _pool(op_type: str, **extra) -> Callable:
    def write(b: _Builder, layer, x: str, path: str) -> str:
        stride = layer.kernel_size if layer.stride is None else layer.stride
        return b.node(op_type, [x], path, kernel_shape=list(layer.kernel_size),
                      strides=list(stride), pads=_pads(layer.padding), **extra)
    return write


# dlsys.nn layer (by class; see _writer) -> the function writing its ONNX nodes.
_WRITERS: dict[str, Callable] = {
    "Linear": _linear, "ReLU": _activation("Relu"), "Sigmoid": _activation("Sigmoid"),
    "Tanh": _activation("Tanh"), "Flatten": _activation("Flatten"),
    "Dropout": lambda b, layer, x, path: x,  # inference: the identity
    "BatchNorm2d": _batch_norm, "Conv2d": _conv, "MaxPool2d": _pool("MaxPool"),
    # dlsys counts the padding in each mean, as PyTorch's default.
    "AvgPool2d": _pool("AveragePool", count_include_pad=1),
}


def _writer(layer: Module, path: str) -> Callable:
    name = type(layer).__name__
    # By class, not only by name: a user's own class called Linear is not dlsys's.
    if name in _WRITERS and Module.layer_types().get(name) is type(layer):
        return _WRITERS[name]
    raise ArgumentTypeError(f"dlsys.onnx.export: layer {path or '(model)'} is a {name}; "
                            f"export writes Sequential trees of {', '.join(sorted(_WRITERS))}")


def _write_layers(b: _Builder, module: Module, x: str, path: str) -> str:
    if isinstance(module, Sequential) and type(module) is Sequential:
        for name, child in module._modules.items():
            x = _write_layers(b, child, x, f"{path}.{name}" if path else name)
        return x
    return _writer(module, path)(b, module, x, path)


def _check_shape(input_shape) -> tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
        raise ArgumentTypeError(f"dlsys.onnx.export: input_shape must be a tuple of ints (the "
                                f"batch first), got {input_shape!r}")
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                 and d > 0 for d in shape):
        raise ShapeError(f"dlsys.onnx.export: input_shape must be positive ints, the batch "
                         f"first, got {input_shape!r}")
    return tuple(int(d) for d in shape)


def _output_shape(model: Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The model's output shape for inputs of ``shape``: a model that cannot take them is
    refused here, with dlsys's shape error, not in the runtime that loads the file."""
    x = Variable("input")
    was_training = model.training
    model.eval()
    try:
        y = model(x)
    finally:
        model.train(was_training)
    order = find_topo_sort([y])
    feeds = {node: node.shape for node in order if node.op.holds_value}
    feeds[x] = shape
    return infer_shapes(order, feeds)[y]


def export(model: Module, input_shape, path, class_names: Sequence[str] | None = None) -> None:
    """Write ``model`` (in eval mode: dropout off, batch norm with running statistics) as an
    ONNX file at ``path`` for inputs of ``input_shape`` (the batch first; the file leaves
    the batch size free). A model from ``import_model`` is written as its own graph with its
    current parameters. The file is written whole or not at all.

    ``class_names`` (one per output column) are written to the file's ``metadata_props``
    under ``reader.CLASS_NAMES_KEY`` as a JSON list, where ``InferenceSession.class_names``
    and ``OnnxModule.class_names`` read them back. Without them, the names the model's
    ``metadata`` records (``"classes"``, as ``dlsys train`` saves them and ``dlsys.load``
    and ``import_model`` restore them) are written, if any."""
    if not isinstance(model, Module):
        raise ArgumentTypeError(f"dlsys.onnx.export: model must be a dlsys.nn.Module, got "
                                f"{type(model).__name__}")
    shape = _check_shape(input_shape)
    metadata = getattr(model, "metadata", None)
    if class_names is None and isinstance(metadata, dict):
        class_names = metadata.get("classes")
    names = None if class_names is None else _check_names(class_names)
    if isinstance(model, OnnxModule):  # imported, perhaps fine-tuned: its own graph back
        proto = model.to_proto()
        if len(model.input_names) == 1 and len(model.output_names) == 1:
            _check_width(names, _output_shape(model, shape))
        if names is not None:
            _set_class_names(proto, names)
        _write_atomically(Path(path), proto.SerializeToString())
        return
    out_shape = _output_shape(model, shape)
    _check_width(names, out_shape)
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    builder = _Builder(helper, numpy_helper)
    output = _write_layers(builder, model, "input", "")
    if output == "input":  # a model that computes nothing still needs one node
        output = builder.node("Identity", ["input"], "")
    graph = helper.make_graph(
        builder.nodes, "dlsys",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, *shape[1:]])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [BATCH, *out_shape[1:]])],
        builder.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="dlsys")
    if names is not None:
        _set_class_names(proto, names)
    onnx.checker.check_model(proto)
    _write_atomically(Path(path), proto.SerializeToString())


def _check_names(class_names) -> list[str]:
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence) \
            or not class_names or not all(isinstance(n, str) for n in class_names):
        raise ArgumentTypeError(f"dlsys.onnx.export: class_names must be a list of strings, "
                                f"one per output column, got {class_names!r}")
    return list(class_names)


def _check_width(names: list[str] | None, out_shape: tuple[int, ...]) -> None:
    if names is not None and len(names) != out_shape[-1]:
        raise ShapeError(f"dlsys.onnx.export: {len(names)} class names for an output of shape "
                         f"{('batch', *out_shape[1:])}, which has {out_shape[-1]} columns")


def _set_class_names(proto, names: list[str]) -> None:
    """``names`` under ``CLASS_NAMES_KEY`` in ``proto``'s metadata, replacing any there."""
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key != CLASS_NAMES_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (CLASS_NAMES_KEY, json.dumps(names))]:
        proto.metadata_props.add(key=key, value=value)


def _write_atomically(path: Path, data: bytes) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dlsys-tmp-", dir=folder)
    except OSError as err:
        raise DataError(f"{path}: cannot write there ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        os.unlink(tmp)
        raise DataError(f"{path}: cannot write the ONNX file ({err.strerror})") from None
