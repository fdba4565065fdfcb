"""Model files: the architecture and the weights in one ``.npz`` archive that loading never
executes.

The archive holds the weights under their ``state_dict`` names and one more entry,
``__dlsys_model__``: JSON bytes describing the architecture as a tree of dlsys.nn layer
types and constructor arguments. Loading reads it with ``allow_pickle=False``, accepts only
layer types defined in ``dlsys.nn`` with arguments of plain JSON types, builds the model and
loads the weights strictly. Writing goes to a temporary file renamed into place, so a
crash never leaves half a model.

A model file is data from outside, and small files can ask for a lot: sizes are checked
before anything is allocated. Each member's size comes from the zip directory and its
shape and dtype from its ``.npy`` header (:func:`npz_members`), at most ``MAX_MODEL_BYTES``
in all; the parameters the architecture would allocate are computed from its configs
(:func:`state_shapes`) and must be exactly the weights the file holds, names and shapes,
before the model is built. A layer whose constructor builds its own children
(``builds_children``, as ``MultiheadAttention`` its ``out_proj``) is saved as its config
alone; ``save`` refuses one whose state is not what that config rebuilds.

``dlsys eval`` and ``dlsys predict`` feed a model one example of the shape its file records
(``metadata["input_shape"]``). ``save`` records the shape it is given (``input_shape=``),
else the one the first layer fixes (:func:`infer_input_shape`), so that a model built and
saved in Python is read by the command line as one ``dlsys train`` wrote.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dlsys.errors import ArgumentTypeError, DataError, DlsysError
from dlsys.graph import Node, find_topo_sort
from dlsys.nn.module import Module, Sequential
from dlsys.ops import Variable
from dlsys.passes.shape_inference import infer_shapes

FORMAT = "dlsys-model"
VERSION = 1
HEADER = "__dlsys_model__"
_JSON_SCALARS = (bool, int, float, str, type(None))
# The arrays of a model file, all together, inflated: the front end's models take 0.03-2 MB;
# 1 GiB is a 268-million-parameter float32 model.
MAX_MODEL_BYTES = 1 << 30
# The architecture's JSON: a few hundred bytes per layer.
MAX_HEADER_BYTES = 1 << 20
# Said of any file that is not one, so that no reader is left to guess (or to follow numpy's
# advice to load a foreign file with allow_pickle).
NOT_A_MODEL_FILE = ("not a dlsys model file (a model file is a .npz written by dlsys train or "
                    "dlsys.save, or an .onnx file)")
# Every zip archive, an .npz included, starts with a local file header or, empty, with the
# end of its directory: a file that starts otherwise is no model file, not a corrupt one.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _is_pair(value) -> bool:
    """A kernel size, stride or padding given per axis: a list of two ints."""
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def architecture(model: Module) -> dict:
    """The model as a tree of ``{"type", "config", "children"}``."""
    cls = type(model)
    if cls not in Module.layer_types().values():
        raise ArgumentTypeError(f"dlsys.save: {cls.__name__} is not a dlsys.nn layer; save "
                                f"a model built from dlsys.nn layers, or its state_dict()")
    tree: dict = {"type": cls.__name__, "config": model.config()}
    if isinstance(model, Sequential):
        tree["children"] = [architecture(child) for child in model]
    elif model._modules and not getattr(cls, "builds_children", False):
        # A layer whose constructor builds its children (MultiheadAttention's out_proj)
        # is described by its config alone; any other child would be lost.
        raise ArgumentTypeError(f"dlsys.save: {cls.__name__} has child modules but is not a "
                                f"Sequential")
    return tree


def _layer_type(tree, where: str) -> type[Module]:
    if not isinstance(tree, dict) or not isinstance(tree.get("type"), str):
        raise DataError(f"{where}: a layer must be an object with a 'type'")
    types = Module.layer_types()
    cls = types.get(tree["type"])
    if cls is None:
        raise DataError(f"{where}: unknown layer type {tree['type']!r}; known: {sorted(types)}")
    return cls


def _config(tree: dict, where: str) -> dict:
    """A layer's constructor arguments: plain JSON values, a JSON pair as a tuple."""
    config = tree.get("config", {})
    if not isinstance(config, dict) or not all(
            isinstance(k, str) and (isinstance(v, _JSON_SCALARS) or _is_pair(v))
            for k, v in config.items()):
        raise DataError(f"{where}: the config of {tree['type']} must map names to numbers, "
                        f"bools, strings or pairs of ints")
    # JSON has no tuples: a (height, width) pair comes back as a list.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def build(tree, where: str) -> Module:
    """The model a tree describes; every deviation from the format is a ``DataError``."""
    cls = _layer_type(tree, where)
    config = _config(tree, where)
    children = tree.get("children")
    try:
        if cls is Sequential:
            if not isinstance(children, list):
                raise DataError(f"{where}: a Sequential needs a list of children")
            return Sequential(*(build(child, f"{where}/{i}") for i, child in enumerate(children)))
        if children is not None:
            raise DataError(f"{where}: {tree['type']} takes no children")
        return cls(**config)
    except TypeError as err:  # an argument the constructor does not take
        raise DataError(f"{where}: cannot build {tree['type']} from {config}: {err}") from None
    except DlsysError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{where}: cannot build {tree['type']}: {err}") from None


Shape = tuple[int, ...]


def npz_members(archive: zipfile.ZipFile, where: str, max_bytes: int,
                max_array_bytes: int | None = None) -> dict[str, tuple[Shape, np.dtype]]:
    """Each array's name, shape and dtype in an ``.npz`` archive, read from the zip directory
    and the ``.npy`` headers alone, so that nothing is inflated before it is known to fit.

    Refused with a :class:`DataError` naming ``where`` and the member: more than
    ``max_bytes`` in all (or one array over ``max_array_bytes``), a member that is not a
    ``.npy`` array, a repeated name, an object dtype, and a header whose shape and dtype do
    not account for exactly the member's size (which bounds what reading it inflates).
    """
    infos = archive.infolist()
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise DataError(f"{where}: its {len(infos)} arrays take {total} bytes inflated, more "
                        f"than the {max_bytes} a file may hold")
    members: dict[str, tuple[Shape, np.dtype]] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if name == info.filename or name in members:
            raise DataError(f"{where}: member {info.filename!r} is not a .npy array or is "
                            f"repeated")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            header_size = member.tell()
        size = math.prod(shape) * dtype.itemsize
        if dtype.hasobject or header_size + size != info.file_size:
            raise DataError(f"{where}: member {name}: its header declares {dtype} of shape "
                            f"{shape} ({size} bytes), the archive holds "
                            f"{info.file_size - header_size}")
        if max_array_bytes is not None and size > max_array_bytes:
            raise DataError(f"{where}: member {name}: {size} bytes (shape {shape}, {dtype}), "
                            f"more than the {max_array_bytes} an array may take")
        members[name] = (shape, dtype)
    return members


def read_member(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One array of an archive whose sizes :func:`npz_members` checked; never unpickled."""
    with archive.open(name + ".npy") as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _positive(*values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _linear_state(args: dict) -> dict[str, Shape] | None:
    if not _positive(args["in_features"], args["out_features"]):
        return None
    weight = {"weight": (args["out_features"], args["in_features"])}
    return {**weight, "bias": (args["out_features"],)} if args["bias"] else weight


def _conv_state(args: dict) -> dict[str, Shape] | None:
    kernel = args["kernel_size"]
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    if not _positive(args["in_channels"], args["out_channels"], *kernel):
        return None
    weight = {"weight": (args["out_channels"], args["in_channels"], *kernel)}
    return {**weight, "bias": (args["out_channels"],)} if args["bias"] else weight


def _batchnorm_state(args: dict) -> dict[str, Shape] | None:
    if not _positive(args["num_features"]):
        return None
    channels = (args["num_features"],)
    return dict.fromkeys(("weight", "bias", "running_mean", "running_var"), channels)


def _embedding_state(args: dict) -> dict[str, Shape] | None:
    if not _positive(args["num_embeddings"], args["embedding_dim"]):
        return None
    return {"weight": (args["num_embeddings"], args["embedding_dim"])}


def _layernorm_state(args: dict) -> dict[str, Shape] | None:
    size = args["normalized_shape"]
    if not _positive(size) or not isinstance(args["elementwise_affine"], bool):
        return None  # built, for LayerNorm's own error
    if not args["elementwise_affine"]:
        return {}
    return {"weight": (size,), "bias": (size,)} if args["bias"] else {"weight": (size,)}


def _attention_state(args: dict) -> dict[str, Shape] | None:
    e, heads = args["embed_dim"], args["num_heads"]
    if not _positive(e, heads) or e % heads:
        return None
    if not args["bias"]:
        return {"in_proj_weight": (3 * e, e), "out_proj.weight": (e, e)}
    return {"in_proj_weight": (3 * e, e), "in_proj_bias": (3 * e,), "out_proj.weight": (e, e),
            "out_proj.bias": (e,)}


def _encoder_layer_state(args: dict) -> dict[str, Shape] | None:
    d, hidden, bias = args["d_model"], args["dim_feedforward"], args["bias"]
    attention = _attention_state({"embed_dim": d, "num_heads": args["nhead"], "bias": bias})
    if attention is None or not _positive(hidden):
        return None
    shapes = {f"self_attn.{name}": shape for name, shape in attention.items()}
    for name, (n_in, n_out) in (("linear1", (d, hidden)), ("linear2", (hidden, d))):
        linear = _linear_state({"in_features": n_in, "out_features": n_out, "bias": bias})
        shapes.update({f"{name}.{key}": shape for key, shape in linear.items()})
    for name in ("norm1", "norm2"):
        norm = _layernorm_state({"normalized_shape": d, "elementwise_affine": True,
                                 "bias": bias})
        shapes.update({f"{name}.{key}": shape for key, shape in norm.items()})
    shapes.update({f"{name}.seed": (1,) for name in ("dropout", "dropout1", "dropout2")})
    return shapes


# What each layer type holds (parameters and buffers), from its constructor's arguments: a
# model file is checked against its weights before a layer allocates anything. A layer type
# in neither table is built to find out (tests/nn/test_serialization.py names any such).
LAYER_STATE: dict[str, Callable[[dict], dict[str, Shape] | None]] = {
    "Linear": _linear_state, "Conv2d": _conv_state, "BatchNorm2d": _batchnorm_state,
    "Dropout": lambda args: {"seed": (1,)}, "Embedding": _embedding_state,
    "LayerNorm": _layernorm_state, "MultiheadAttention": _attention_state,
    "TransformerEncoderLayer": _encoder_layer_state,
}
STATELESS_LAYERS = frozenset({"ReLU", "Sigmoid", "Tanh", "GELU", "Flatten", "MaxPool2d",
                              "AvgPool2d", "_Pool2d", "Sequential"})


def register_layer_state(layer_type: str,
                         rule: Callable[[dict], dict[str, Shape] | None]) -> None:
    """Declare what a layer type defined outside this file holds (a model of
    ``dlsys.nn``, say), so that its model files are checked before it is built: ``rule``
    takes the constructor's arguments, defaults applied, and returns the state dict's names
    and shapes, or None where the constructor would refuse them (it is then built, for its
    error). Call it where the layer is defined."""
    LAYER_STATE[layer_type] = rule


def state_shapes(tree, where: str, prefix: str = "") -> dict[str, Shape]:
    """The ``state_dict`` names and shapes of the model ``tree`` describes, computed from
    its configs without allocating; a layer whose config its constructor would refuse, or
    of a type neither table knows, is built (for its error, or its state)."""
    cls = _layer_type(tree, where)
    shapes: dict[str, Shape] = {}
    if cls is Sequential:
        children = tree.get("children")
        if not isinstance(children, list):
            raise DataError(f"{where}: a Sequential needs a list of children")
        for i, child in enumerate(children):
            shapes.update(state_shapes(child, f"{where}/{i}", f"{prefix}{i}."))
        return shapes
    own = None
    if tree["type"] in LAYER_STATE:
        try:
            args = inspect.signature(cls).bind(**_config(tree, where))
        except TypeError:
            args = None  # build names the argument the constructor does not take
        if args is not None:
            args.apply_defaults()
            own = LAYER_STATE[tree["type"]](args.arguments)
    elif tree["type"] in STATELESS_LAYERS:
        own = {}
    if own is None:
        own = {name: value.shape for name, value in build(tree, where).state_dict().items()}
    return {prefix + name: tuple(shape) for name, shape in own.items()}


def output_shape(output: Node, x: Node, input_shape: Shape) -> Shape:
    """``output``'s shape for one example of ``input_shape`` fed as ``x``, by shape inference
    alone (no kernel is built); a ``ShapeError`` where the graph cannot take it."""
    order = find_topo_sort([output])
    feeds = {node: node.shape for node in order if node.op.holds_value}
    feeds[x] = (1, *input_shape)
    return infer_shapes(order, feeds)[output]


# The sides tried for a convolutional model's square input, smallest first: MNIST's 28 is
# the 28th try, each shape inference alone.
MAX_INFERRED_SIDE = 512


def infer_input_shape(model: Module) -> Shape | None:
    """One example's shape (without the batch) where the model's first layer fixes it, or
    None where it does not.

    A first ``Linear(n, ...)`` takes ``(n,)``. A first ``Conv2d`` or ``BatchNorm2d`` of ``c``
    channels fixes no image size, but a later ``Linear`` may: the smallest square
    ``(c, s, s)`` that the whole model turns into one row of scores is taken, 28 for LeNet-5
    and the front end's cnn (31 passes too, pooling dropping the extra rows, but no pixel of
    28 is dropped). A model that takes ``2s`` as well (global pooling) fixes no size.
    """
    first = next((layer.config() for _, layer in model.named_modules()
                  if {"in_features", "in_channels", "num_features"} & set(layer.config())),
                 None)
    if first is None:
        return None
    if "in_features" in first:
        candidates = [(first["in_features"],)]
    else:
        channels = first.get("in_channels", first.get("num_features"))
        candidates = [(channels, side, side) for side in range(1, MAX_INFERRED_SIDE + 1)]
    x = Variable("x")
    was_training = model.training
    model.eval()  # the graph eval and predict build
    try:
        output = model(x)
    except (DlsysError, TypeError):  # TypeError: a model of several inputs (attention)
        return None
    finally:
        model.train(was_training)

    def scores(shape: Shape) -> bool:
        try:
            return len(output_shape(output, x, shape)) == 2
        except DlsysError:
            return False

    shape = next((shape for shape in candidates if scores(shape)), None)
    if shape is None or (len(shape) == 3 and scores((shape[0], 2 * shape[1], 2 * shape[2]))):
        return None
    return shape


def _input_shape(value, model: Module) -> list[int] | None:
    """``save``'s ``input_shape``, checked; inferred where not given."""
    if value is None:
        inferred = infer_input_shape(model)
        return None if inferred is None else list(inferred)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"dlsys.save: input_shape must be a tuple of positive ints "
                                f"(one example, without the batch), got {value!r}")
    shape = list(value)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                            for d in shape):
        raise ArgumentTypeError(f"dlsys.save: input_shape must be a tuple of positive ints "
                                f"(one example, without the batch), got {value!r}")
    return shape


def save(model: Module, path: str | os.PathLike, metadata: dict | None = None,
         input_shape: Sequence[int] | None = None) -> Path:
    """Write ``model`` (architecture and weights) to ``path``, atomically.

    ``metadata``: JSON-able facts for whoever loads it (``dlsys train`` records the input
    shape and the class names); ``load`` puts it on the model as ``model.metadata``.
    ``input_shape``: one example's shape without the batch, such as ``(784,)`` or
    ``(1, 28, 28)``, recorded as ``metadata["input_shape"]`` for ``dlsys eval`` and
    ``dlsys predict``; left out (and not in ``metadata``), the shape the first layer fixes
    (:func:`infer_input_shape`) is recorded, where it fixes one.
    """
    if not isinstance(model, Module):
        raise ArgumentTypeError(f"dlsys.save takes a dlsys.nn.Module, got "
                                f"{type(model).__name__}")
    metadata = dict(metadata or {})
    if input_shape is not None or "input_shape" not in metadata:
        shape = _input_shape(input_shape, model)
        if shape is not None:
            metadata["input_shape"] = shape
    tree = architecture(model)
    try:
        header = json.dumps({"format": FORMAT, "version": VERSION, "architecture": tree,
                             "metadata": metadata})
    except (TypeError, ValueError) as err:
        raise ArgumentTypeError(f"dlsys.save: metadata must be JSON data ({err})") from None
    state = model.state_dict()
    if HEADER in state:
        raise ArgumentTypeError(f"dlsys.save: a parameter may not be named {HEADER}")
    _check_rebuilt_state(tree, state, type(model).__name__)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".dlsys-tmp-", suffix=".npz", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **{HEADER: np.frombuffer(header.encode(), dtype=np.uint8)},
                     **state)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_rebuilt_state(tree: dict, state: dict[str, np.ndarray], name: str) -> None:
    """Refuse to write a model that loading would not rebuild: a layer described by its
    config alone (``builds_children``) whose children were replaced after it was built."""
    rebuilt = state_shapes(tree, "dlsys.save")
    held = {key: tuple(array.shape) for key, array in state.items()}
    if rebuilt != held:
        differ = sorted(key for key in set(rebuilt) | set(held)
                        if rebuilt.get(key) != held.get(key))
        raise ArgumentTypeError(f"dlsys.save: {name}'s state differs from what its "
                                f"architecture rebuilds at {', '.join(differ)} (a child "
                                f"module replaced after construction is not saved)")


def load(path: str | os.PathLike) -> Module:
    """The model saved at ``path``; a truncated, tampered or foreign file is a ``DataError``.

    Nothing is allocated before it is known to fit: the archive's sizes are checked (at most
    ``MAX_MODEL_BYTES``), then the parameters the architecture declares against the weights
    the file holds, and only then is the model built and are the weights read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise DataError(f"{path}: cannot read the model file ({err.strerror or err})") from None
    if magic not in _ZIP_MAGIC:
        raise DataError(f"{path}: {NOT_A_MODEL_FILE}")
    try:
        with zipfile.ZipFile(path) as archive:
            # An archive of other things (params.npz, any zip) is named as no model file
            # before its members are judged as a model's.
            if HEADER + ".npy" not in archive.namelist():
                raise DataError(f"{path}: {NOT_A_MODEL_FILE}; this archive has no {HEADER} "
                                f"entry")
            members = npz_members(archive, str(path), MAX_MODEL_BYTES)
            header = _read_header(archive, members, path)
            model = _checked_model(header, members, path)
            weights = {name: read_member(archive, name) for name in members if name != HEADER}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
            UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"{path}: not a readable dlsys model file (truncated or corrupt: "
                        f"{err})") from None
    try:
        model.load_state_dict(weights, strict=True)
    except DlsysError as err:
        raise DataError(f"{path}: the weights do not fit the architecture: {err}") from None
    return model


def _read_header(archive: zipfile.ZipFile, members: dict, path: Path) -> dict:
    shape, dtype = members[HEADER]
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_HEADER_BYTES:
        raise DataError(f"{path}: {HEADER} must be at most {MAX_HEADER_BYTES} bytes of JSON, "
                        f"got {dtype} of shape {shape}")
    header = json.loads(read_member(archive, HEADER).tobytes().decode())
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: {NOT_A_MODEL_FILE}")
    if header.get("version") != VERSION:
        raise DataError(f"{path}: model file version {header.get('version')!r}; this dlsys "
                        f"reads version {VERSION}")
    if not isinstance(header.get("metadata", {}), dict):
        raise DataError(f"{path}: the model's metadata must be a JSON object")
    return header


def _checked_model(header: dict, members: dict, path: Path) -> Module:
    """The model the header describes, built once its state is known to be the weights'."""
    tree = header.get("architecture")
    expected = state_shapes(tree, str(path))
    weights = {name: shape for name, (shape, _) in members.items() if name != HEADER}
    problems = []
    missing = [name for name in expected if name not in weights]
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected members {', '.join(unexpected)}")
    problems += [f"{name} has shape {weights[name]}, the architecture {shape}"
                 for name, shape in expected.items() if weights.get(name, shape) != shape]
    problems += [f"{name} is {dtype}, not real numbers" for name, (_, dtype) in members.items()
                 if name != HEADER and dtype.kind not in "iuf"]
    if problems:
        raise DataError(f"{path}: the weights do not fit the architecture: "
                        f"{'; '.join(problems)}")
    model = build(tree, str(path))
    model.metadata = header.get("metadata", {})
    return model
