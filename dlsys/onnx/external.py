"""ONNX's external data: tensors whose bytes lie in a file beside the model, as PyTorch's
default exporter (``torch.onnx.export(..., dynamo=True)``) writes its larger weights.

Each tensor names its file (``location``), where its bytes start (``offset``) and how many
there are (``length``). The names come from the model file, which is data from outside, so
they are read only where they cannot reach anything but the model's own folder: a relative
path without ``..``, resolving (symlinks followed) to a regular file inside that folder.
Offsets and lengths are checked against the file's size and against the size the tensor's
shape and dtype declare, all before any byte is read; every refusal is a ``DataError``
naming the tensor and the file. onnx's own loader is not used: it follows the location
with fewer checks and reports a bad one with an error from inside onnx.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path, PurePosixPath

from dlsys.errors import DataError

# The bytes all external tensors may hold together: ONNX's shape inference, run at import,
# takes the whole model as one protobuf message, which holds at most 2 GiB.
MAX_EXTERNAL_BYTES = (1 << 31) - 1
_KEYS = {"location", "offset", "length", "checksum", "basename"}
# Bytes per element of the ONNX element types (TensorProto.DataType) read from external
# data: the fixed-size ones. Strings have no fixed size, and the 2-, 4- and 6-bit types
# pack several values a byte; dlsys computes in none of them.
_ITEMSIZES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
              14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 24: 1}
# A Windows drive ("C:"): an absolute path there, though POSIX reads it as a relative one.
_DRIVE = re.compile(r"^[A-Za-z]:")


def external_tensors(model) -> list:
    """The tensors of ``model``'s graph stored outside the file: initializers and the
    tensors of node attributes (a Constant node's value)."""
    from onnx import TensorProto

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            tensors.extend([attr.t] if attr.HasField("t") else [])
            tensors.extend(attr.tensors)
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


def read_external_data(model, folder: Path | None, where: str) -> None:
    """Read every external tensor of ``model`` into the model itself (``raw_data``), from
    files in ``folder``, the folder of the model file; None where the model came as bytes
    or a ModelProto, which leaves no folder to read from."""
    from onnx import TensorProto

    tensors = external_tensors(model)
    if not tensors:
        return
    if folder is None:
        raise DataError(f"{where}: tensor {tensors[0].name!r} is stored in an external "
                        f"file ({_entries(tensors[0], where).get('location', '?')!r}); give "
                        f"the model's path so that dlsys reads it from beside the model")
    root = Path(os.path.realpath(folder))
    plans = [_plan(tensor, root, where) for tensor in tensors]
    total = sum(length for _, _, _, length in plans)
    if total > MAX_EXTERNAL_BYTES:
        raise DataError(f"{where}: its external tensors take {total} bytes, more than the "
                        f"{MAX_EXTERNAL_BYTES} dlsys reads")
    for tensor, path, offset, length in plans:
        data = _read(path, offset, length, tensor.name, where)
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT  # the bytes are in the message now


def _entries(tensor, where: str) -> dict[str, str]:
    entries = {}
    for entry in tensor.external_data:
        if entry.key in entries:
            raise DataError(f"{where}: tensor {tensor.name!r} names its external "
                            f"{entry.key!r} twice")
        entries[entry.key] = entry.value
    return entries


def _plan(tensor, root: Path, where: str) -> tuple[object, Path, int, int]:
    """(tensor, file, offset, length) for one external tensor, every field checked."""
    what = f"{where}: tensor {tensor.name!r}"
    entries = _entries(tensor, where)
    unknown = sorted(set(entries) - _KEYS)
    if unknown:
        raise DataError(f"{what}: unknown external data field(s) {unknown}; ONNX defines "
                        f"{sorted(_KEYS)}")
    location = entries.get("location", "")
    path = _inside(location, root, what)
    offset = _count(entries, "offset", 0, what, location)
    size = path.stat().st_size
    # Without a length, the tensor takes the rest of the file (ONNX's spec).
    length = _count(entries, "length", max(size - offset, 0), what, location)
    expected = _declared_bytes(tensor, what)
    if offset + length > size:
        raise DataError(f"{what}: its {length} bytes at offset {offset} of {location!r} lie "
                        f"past the file's end ({size} bytes)")
    if length != expected:
        raise DataError(f"{what}: {location!r} gives it {length} bytes, its shape "
                        f"{tuple(tensor.dims)} and dtype take {expected}")
    return tensor, path, offset, length


def _inside(location: str, root: Path, what: str) -> Path:
    """The regular file ``location`` names inside ``root``, or a refusal saying why not."""
    # Locations are POSIX paths relative to the model's folder (ONNX's spec); a backslash or
    # a drive letter is another platform's absolute or parent path, refused alike.
    pure = PurePosixPath(location)
    if not location:
        raise DataError(f"{what}: external data without a file name")
    if "\x00" in location:
        raise DataError(f"{what}: external data file {location!r} holds a NUL character")
    if pure.is_absolute() or _DRIVE.match(location):
        raise DataError(f"{what}: external data file {location!r} is an absolute path; "
                        f"dlsys reads external data only from beside the model, in {root}")
    if "\\" in location:
        raise DataError(f"{what}: external data file {location!r} holds a backslash; ONNX "
                        f"names them by POSIX paths relative to the model's folder ({root})")
    if ".." in pure.parts:
        raise DataError(f"{what}: external data file {location!r} climbs out of the model's "
                        f"folder ('..'); dlsys reads external data only from {root}")
    path = Path(os.path.realpath(root / pure))
    if root != path and root not in path.parents:
        raise DataError(f"{what}: external data file {location!r} is a link to {path}, "
                        f"outside the model's folder {root}")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{what}: its external data file {location!r} is not in "
                        f"{root}") from None
    except OSError as err:
        raise DataError(f"{what}: cannot read its external data file {location!r} "
                        f"({err.strerror})") from None
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise DataError(f"{what}: external data {location!r} is not a regular file")
    return path


def _count(entries: dict, key: str, default: int, what: str, location: str) -> int:
    text = entries.get(key)
    if text is None:
        return default
    # ASCII digits only (no sign, space or underscore, no other script's digits), and few
    # enough for int() to take: any real offset has at most 19.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise DataError(f"{what}: external data {key} {text!r} (in {location!r}) is not a "
                        f"whole number of bytes")
    return int(text)


def _declared_bytes(tensor, what: str) -> int:
    """What the tensor's shape and dtype take, as raw little-endian bytes."""
    itemsize = _ITEMSIZES.get(tensor.data_type)
    if itemsize is None:
        from onnx import TensorProto

        try:
            name = TensorProto.DataType.Name(tensor.data_type)
        except ValueError:  # a number no ONNX version defines
            name = str(tensor.data_type)
        raise DataError(f"{what}: external data of element type {name} is not supported")
    if any(d < 0 for d in tensor.dims):
        raise DataError(f"{what}: negative dimension in its shape {tuple(tensor.dims)}")
    return math.prod(tensor.dims) * itemsize


def _read(path: Path, offset: int, length: int, name: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            # Checked again on the file opened: it may have been replaced since.
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise DataError(f"{where}: tensor {name!r}: {path.name!r} is not a regular "
                                f"file")
            f.seek(offset)
            data = f.read(length)
    except OSError as err:
        raise DataError(f"{where}: tensor {name!r}: cannot read {path.name!r} "
                        f"({err.strerror})") from None
    if len(data) != length:  # the file shrank since it was measured
        raise DataError(f"{where}: tensor {name!r}: {path.name!r} ended after {len(data)} of "
                        f"its {length} bytes")
    return data
