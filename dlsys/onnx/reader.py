"""Reading an ONNX file as data: the protobuf parsed, checked, and its initializers, attributes
and declared shapes turned into plain Python and numpy values.

Parsing a protobuf runs no code from the file. Tensors stored outside the file (ONNX's
"external data") are read only from beside the model file (``dlsys.onnx.external``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dlsys.errors import ArgumentTypeError, DataError, DlsysError
from dlsys.onnx.external import read_external_data

# The first default-domain opset whose operator semantics the converters follow (Softmax's
# axis, Reshape's allowzero, BatchNormalization's training_mode all take their opset-13+
# meaning). An older model is converted to it with ONNX's version converter; newer opsets
# are read up to the installed onnx package's newest (an attribute or input a converter
# does not know is refused by name, so a later opset's additions cannot pass unseen).
FIRST_OPSET = 13
class OnnxError(DlsysError, ValueError):
    """An ONNX model dlsys cannot import: an operator, attribute value or opset it does not
    support, or a graph that does not fit dlsys (the message names the node)."""


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxError("dlsys.onnx needs the onnx package: pip install 'dlsys[onnx]'") from None
    return onnx


def load_model(source, where: str | None = None):
    """The ``onnx.ModelProto`` in ``source`` (a path, the file's bytes or a ModelProto),
    parsed and checked; a file that is not a valid ONNX model is a ``DataError``."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    folder = None  # where external data may lie: beside a model read from a path
    if isinstance(source, onnx.ModelProto):
        model, where = source, where or "<ModelProto>"
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data, where = bytes(source), where or "<bytes>"
        elif isinstance(source, (str, os.PathLike)):
            where = str(source)
            path = Path(source)
            folder = path.parent
            if not path.is_file():
                raise DataError(f"{where}: no such ONNX file")
            try:
                data = path.read_bytes()
            except OSError as err:
                raise DataError(f"{where}: cannot read the ONNX file ({err.strerror})") from None
        else:
            raise ArgumentTypeError(f"an ONNX model is a path, bytes or an onnx.ModelProto, "
                                    f"got {type(source).__name__}")
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError) as err:
            raise DataError(f"{where}: not an ONNX model, or a truncated one ({err})") from None
    # Protobuf parses many byte strings (an empty file, a truncated one cut at a field
    # boundary) into a message with nothing in it; the checker tells those from models.
    if not model.graph.node and not model.graph.output:
        raise DataError(f"{where}: not an ONNX model (no graph), or a truncated file")
    read_external_data(model, folder, where)
    _check(onnx, model, where)
    return upgrade_opset(model, where), where


def _check(onnx, model, where: str) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # the checker raises ValidationError and C++ errors alike
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: not a valid ONNX model: {message}") from None
    newest = newest_opset()
    opset = default_opset(model)
    if opset is not None and opset > newest:
        raise OnnxError(f"{where}: opset {opset} of the default domain; dlsys imports opsets "
                        f"{FIRST_OPSET} to {newest} (the installed onnx package's newest)")


def newest_opset() -> int:
    """The newest default-domain opset the installed onnx package knows."""
    return int(require_onnx().defs.onnx_opset_version())


def upgrade_opset(model, where: str):
    """``model`` itself when its default-domain opset is ``FIRST_OPSET`` or newer, else a
    copy converted to ``FIRST_OPSET`` by ONNX's version converter (an opset-9 Upsample
    becomes a Resize, an opset-11 Squeeze's axes attribute an input). A model the converter
    cannot convert is an ``OnnxError`` naming its opset and its operators of that opset."""
    opset = default_opset(model)
    if opset is None or opset >= FIRST_OPSET:
        return model
    onnx = require_onnx()
    try:
        converted = onnx.version_converter.convert_version(model, FIRST_OPSET)
    except Exception as err:  # the converter raises C++ errors of several types
        lines = str(err).strip().splitlines()
        op_types = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")})
        raise OnnxError(f"{where}: opset {opset} of the default domain: ONNX's version "
                        f"converter cannot convert the model to opset {FIRST_OPSET} "
                        f"({lines[0] if lines else type(err).__name__}); its operators: "
                        f"{', '.join(op_types)}; export the model at opset {FIRST_OPSET} or "
                        f"newer") from None
    return converted


def default_opset(model) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def tensor_array(tensor) -> np.ndarray:
    """An initializer or attribute tensor as a numpy array."""
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def attributes(node) -> dict:
    """A node's attributes as Python values (strings decoded, tensors as numpy arrays)."""
    from onnx import AttributeProto, helper

    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.type == AttributeProto.STRING:
            value = value.decode("utf-8", "replace")
        elif attr.type == AttributeProto.TENSOR:
            value = tensor_array(value)
        elif attr.type in (AttributeProto.INTS, AttributeProto.FLOATS):
            value = list(value)
        values[attr.name] = value
    return values


def _dims(type_proto) -> tuple[int | str | None, ...] | None:
    """A value's declared dimensions: an int, a symbol's name, or None where unknown."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in type_proto.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return tuple(dims)


def type_name(type_proto) -> str:
    """ONNX runtime's spelling of a value's type, such as ``tensor(float)``."""
    from onnx import helper

    if not type_proto.HasField("tensor_type"):
        return "unknown"
    elem = type_proto.tensor_type.elem_type
    try:
        numpy_type = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else None
    except (KeyError, TypeError, ValueError):  # a type numpy has no name for
        return f"tensor(type {elem})"
    names = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
             np.dtype(np.int64): "int64", np.dtype(np.int32): "int32",
             np.dtype(np.float16): "float16", np.dtype(np.bool_): "bool"}
    return f"tensor({names.get(numpy_type, str(numpy_type))})"


def element_type(type_proto) -> np.dtype | None:
    """The numpy type of a tensor value's elements, None where the file says none (or one
    numpy has no name for)."""
    from onnx import helper

    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.elem_type:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(type_proto.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def element_types(model) -> dict[str, np.dtype]:
    """Every value's element type as the file declares it or ONNX's type inference finds
    it (a Cast's output, a Div's of two int64 tensors): the converters read it where the
    same dlsys operator stands for different ONNX semantics (an integer Div truncates)."""
    onnx = require_onnx()
    # On a copy without the weights' data, which tells no type.
    graph = _inferred(onnx, _without_weights(onnx, model)).graph
    types = {}
    for value in _values(graph):
        dtype = element_type(value.type)
        if dtype is not None:
            types[value.name] = dtype
    for tensor in model.graph.initializer:
        try:
            types[tensor.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except (KeyError, TypeError, ValueError):
            pass
    return types


def _inferred(onnx, model, **options):
    """``model`` with ONNX's shape inference applied, or as it is where the inference stops
    (at an op it does not know): the declared shapes and types remain."""
    try:
        return onnx.shape_inference.infer_shapes(model, **options)
    except Exception:  # noqa: BLE001 - whatever stops the inference, the file still serves
        return model


def _values(graph) -> tuple:
    """The graph's inputs, inner values and outputs, whose types the inference filled."""
    return (*graph.input, *graph.value_info, *graph.output)


def declared_values(model) -> dict[str, tuple]:
    """``name -> (dims, type)`` of the graph's inputs and outputs as the file declares them."""
    graph = model.graph
    return {v.name: (_dims(v.type), type_name(v.type)) for v in (*graph.input, *graph.output)}


def static_shapes(model, free_batch: bool = True,
                  data_prop: bool = False) -> dict[str, tuple[int | None, ...]]:
    """Every value's dimensions that ONNX's shape inference can tell without the batch size
    (None for a symbolic or unknown dimension). The converters read them where a dlsys
    operator needs a size fixed when the graph is built (a reshape's target). With
    ``free_batch``, the inputs' first dimension counts as unknown whatever the file says;
    ``data_prop`` lets the inference follow computed shapes (Shape -> Gather -> Reshape)."""
    onnx = require_onnx()
    # The batch is left free, whatever size the file fixes: an exporter's example batch
    # (PyTorch's default export fixes it) must not become a reshape's size, so that the
    # imported module takes any batch. Feeds are still checked against the declared size.
    if free_batch:
        model = _free_batch(onnx, model)
    graph = _inferred(onnx, model, data_prop=data_prop).graph
    shapes = {}
    for value in _values(graph):
        dims = _dims(value.type)
        if dims is not None:
            shapes[value.name] = tuple(d if isinstance(d, int) else None for d in dims)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes


def shapes_for_feeds(model, input_shapes: dict[str, tuple[int, ...]],
                     input_values: dict[str, np.ndarray]) -> dict[str, tuple[int | None, ...]]:
    """``static_shapes`` of ``model`` run at these inputs' shapes, the inputs of
    ``input_values`` taken as constants of those values (so that ONNX's inference follows
    a target shape fed as an input): the sizes a graph built for one set of feeds reads."""
    onnx = require_onnx()
    from onnx import numpy_helper

    copy = _without_weights(onnx, model)
    graph = copy.graph
    kept = []
    for value in graph.input:
        if value.name in input_values:
            graph.initializer.append(numpy_helper.from_array(
                np.asarray(input_values[value.name]), value.name))
            continue
        kept.append(value)
        shape = input_shapes.get(value.name)
        if shape is not None and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape
            dims.ClearField("dim")
            for size in shape:
                dims.dim.add().dim_value = int(size)
    del graph.input[:]
    graph.input.extend(kept)
    # The sizes recorded for the other values may be the file's symbolic ones; inferred
    # again from the inputs'.
    del graph.value_info[:]
    for value in graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    return static_shapes(copy, free_batch=False, data_prop=True)


# Initializers of more elements than this are left out of the copies that shape inference
# reads (declared as inputs of their type and shape instead): their values tell no size.
_WEIGHT_ELEMENTS = 64


def _without_weights(onnx, model):
    """A copy of ``model`` for shape inference that leaves out its floating-point weights'
    data (each declared as an input of its type and shape): a model of hundreds of
    megabytes is not copied again for each set of feeds. Integer tensors and small ones,
    which may be shapes that ONNX's data propagation follows, are kept."""
    import math

    from onnx import TensorProto, helper

    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    graph, source = copy.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    declared = {v.name for v in source.input}
    floating = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                TensorProto.BFLOAT16)
    for tensor in source.initializer:
        if tensor.data_type in floating and math.prod(tensor.dims) > _WEIGHT_ELEMENTS:
            if tensor.name not in declared:
                graph.input.append(helper.make_tensor_value_info(
                    tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            graph.initializer.append(tensor)
    return copy


def _free_batch(onnx, model):
    """A copy of ``model`` whose inputs' first dimension is symbolic."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {t.name for t in copy.graph.initializer}
    freed = False
    for value in copy.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            freed |= dims[0].HasField("dim_value")
            dims[0].Clear()
            dims[0].dim_param = "dlsys_batch"
    if freed:
        # The shapes the file records for the other values (PyTorch's default exporter
        # writes every one) hold the fixed batch too, and ONNX's inference keeps what a file
        # records: they are inferred again from the freed inputs.
        del copy.graph.value_info[:]
        for value in copy.graph.output:
            if value.type.HasField("tensor_type"):
                value.type.tensor_type.ClearField("shape")
    return copy


# What ``torch.export`` made of each tensor it lifted into an input, as PyTorch's default
# (dynamo) exporter records it in the value's metadata: "PARAMETER" for a module's
# parameter, "BUFFER", "CONSTANT_TENSOR". Initializers the exporter computed itself by
# folding (a transposed weight, an attention mask, a GELU's constant) carry no record.
TORCH_INPUT_KIND_KEY = "pkg.torch.export.graph_signature.InputSpec.kind"


def torch_input_kinds(model) -> dict[str, str] | None:
    """``value name -> kind`` as PyTorch's exporter records it (``TORCH_INPUT_KIND_KEY``),
    or None for a file that records none (any other exporter, or PyTorch's TorchScript
    one)."""
    kinds = {}
    for value in (*model.graph.input, *model.graph.value_info):
        for entry in value.metadata_props:
            if entry.key == TORCH_INPUT_KIND_KEY:
                kinds[value.name] = entry.value
    return kinds or None


# The metadata_props key under which ``dlsys.onnx.export`` writes the class names: a JSON
# list of strings, one per output column.
CLASS_NAMES_KEY = "class_names"


def metadata_props(model) -> dict[str, str]:
    """The model's ``metadata_props`` (free-form key -> value text) as a dict."""
    return {entry.key: entry.value for entry in model.metadata_props}


def class_names(model, where: str) -> list[str] | None:
    """The class names the file records under ``CLASS_NAMES_KEY``, None where it records
    none. Read as JSON data, never evaluated. Metadata is free-form: another tool may use the
    same key in its own way, so a value that is not a list of strings, or whose length is
    not the width of the model's one output, is ignored with a warning rather than refusing
    a model that runs."""
    import json
    import warnings

    text = metadata_props(model).get(CLASS_NAMES_KEY)
    if text is None:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    problem = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problem = f"is not a JSON list of class names (strings): {text[:80]!r}"
    else:
        outputs = [_dims(v.type) for v in model.graph.output]
        width = outputs[0][-1] if len(outputs) == 1 and outputs[0] else None
        if isinstance(width, int) and width != len(names):
            problem = f"names {len(names)} classes, the model's output has {width} columns"
    if problem is not None:
        warnings.warn(f"{where}: ignoring metadata {CLASS_NAMES_KEY!r}, which {problem}",
                      RuntimeWarning, stacklevel=2)
        return None
    return names


def fixed_batch(declared: dict[str, tuple], input_names: list[str]) -> int | None:
    """The batch size the file fixes: the first dimension every input declares, when they
    all declare the same number; None where any leaves it free (or declares no shape)."""
    firsts = {dims[0] if dims else None for dims, _ in (declared[n] for n in input_names)}
    first = firsts.pop() if len(firsts) == 1 else None
    return first if isinstance(first, int) else None
