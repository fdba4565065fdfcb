"""Model files: the architecture and the weights in one ``.npz`` archive that loading never
executes.

The archive holds the weights under their ``state_dict`` names and one more entry,
``__dlsys_model__``: JSON bytes describing the architecture as a tree of dlsys.nn layer
types and constructor arguments. Loading reads it with ``allow_pickle=False``, accepts only
layer types defined in ``dlsys.nn`` with arguments of plain JSON types, builds the model and
loads the weights strictly. Writing goes to a temporary file renamed into place, so a
crash never leaves half a model.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from dlsys.errors import ArgumentTypeError, DataError, DlsysError
from dlsys.nn.module import Module, Sequential

FORMAT = "dlsys-model"
VERSION = 1
HEADER = "__dlsys_model__"
_JSON_SCALARS = (bool, int, float, str, type(None))


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
    elif model._modules:
        raise ArgumentTypeError(f"dlsys.save: {cls.__name__} has child modules but is not a "
                                f"Sequential")
    return tree


def build(tree, where: str) -> Module:
    """The model a tree describes; every deviation from the format is a ``DataError``."""
    if not isinstance(tree, dict) or not isinstance(tree.get("type"), str):
        raise DataError(f"{where}: a layer must be an object with a 'type'")
    types = Module.layer_types()
    cls = types.get(tree["type"])
    if cls is None:
        raise DataError(f"{where}: unknown layer type {tree['type']!r}; known: {sorted(types)}")
    config = tree.get("config", {})
    if not isinstance(config, dict) or not all(
            isinstance(k, str) and (isinstance(v, _JSON_SCALARS) or _is_pair(v))
            for k, v in config.items()):
        raise DataError(f"{where}: the config of {tree['type']} must map names to numbers, "
                        f"bools, strings or pairs of ints")
    # JSON has no tuples: a (height, width) pair comes back as a list.
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
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


def save(model: Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model`` (architecture and weights) to ``path``, atomically.

    ``metadata``: JSON-able facts for whoever loads it (``dlsys train`` records the input
    shape and the class names); ``load`` puts it on the model as ``model.metadata``.
    """
    if not isinstance(model, Module):
        raise ArgumentTypeError(f"dlsys.save takes a dlsys.nn.Module, got "
                                f"{type(model).__name__}")
    try:
        header = json.dumps({"format": FORMAT, "version": VERSION,
                             "architecture": architecture(model),
                             "metadata": metadata or {}})
    except (TypeError, ValueError) as err:
        raise ArgumentTypeError(f"dlsys.save: metadata must be JSON data ({err})") from None
    state = model.state_dict()
    if HEADER in state:
        raise ArgumentTypeError(f"dlsys.save: a parameter may not be named {HEADER}")
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


def load(path: str | os.PathLike) -> Module:
    """The model saved at ``path``; a truncated, tampered or foreign file is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if HEADER not in archive.files:
                raise DataError(f"{path}: not a dlsys model file (no {HEADER} entry)")
            header = json.loads(bytes(archive[HEADER]).decode())
            weights = {name: archive[name] for name in archive.files if name != HEADER}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
            UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"{path}: not a readable dlsys model file (truncated or corrupt: "
                        f"{err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: not a dlsys model file")
    if header.get("version") != VERSION:
        raise DataError(f"{path}: model file version {header.get('version')!r}; this dlsys "
                        f"reads version {VERSION}")
    model = build(header.get("architecture"), str(path))
    try:
        model.load_state_dict(weights, strict=True)
    except DlsysError as err:
        raise DataError(f"{path}: the weights do not fit the architecture: {err}") from None
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise DataError(f"{path}: the model's metadata must be a JSON object")
    model.metadata = metadata
    return model
