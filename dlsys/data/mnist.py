"""Loading MNIST-format data sets: four IDX files in a directory, or a classic ``mnist.pkl.gz``.

Every loader returns images as float32 ``(N, 784)`` in ``[0, 1]`` and labels as int64 ``(N,)``.
Anything wrong with a file raises :class:`~dlsys.errors.DataError` naming the file and the fault.
The validation split is held out from the *end* of the training images: by default a sixth of
them, at most 10000, so that on MNIST's 60000 the IDX files and the pickle's own ``(train,
valid)`` split coincide, and a small data set keeps most of its images for training.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

import numpy as np

from dlsys.data.array_pickle import read_arrays, read_up_to
from dlsys.errors import DataError

IMAGE_ROWS = IMAGE_COLS = 28
NUM_PIXELS = IMAGE_ROWS * IMAGE_COLS
NUM_CLASSES = 10
# The default validation split: this fraction of the training images, at most the cap.
DEFAULT_VAL_FRACTION = 1 / 6
DEFAULT_VAL_CAP = 10000
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV_VAR = "DLSYS_DATA"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), then the number of dimensions.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
# Reads are made in pieces of this size, so memory follows the data actually there.
_CHUNK = 1 << 20
# The arrays of a pickled data set, all together: the classic mnist.pkl.gz holds 220 MB
# (float32 images), the same in float64 440 MB.
MAX_PICKLE_BYTES = 1 << 30
# The pickle's six arrays, in the order numpy writes them.
_PICKLE_ARRAYS = tuple(f"{part} {what}" for part in ("train", "valid", "test")
                       for what in ("images", "labels"))


@dataclass(frozen=True)
class Split:
    """One part of a data set: float32 images ``(N, 784)`` and int64 labels ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def one_hot(self) -> np.ndarray:
        """The labels as float32 one-hot rows ``(N, 10)``, the form the loss takes."""
        return one_hot(self.labels)


@dataclass(frozen=True)
class Dataset:
    """Training, validation and test splits, and where they came from."""

    train: Split
    val: Split
    test: Split
    source: str

    @property
    def name(self) -> str:
        """A short name for titles and logs: see :func:`dataset_name`."""
        return dataset_name(self.source)


def dataset_name(source: str | os.PathLike) -> str:
    """``Fashion-MNIST`` for Debian's copy, else the last part of the path (``mnist.pkl.gz``).

    A full path is too long for a plot's title, and the folder's name is what a user chose.
    """
    path = Path(source)
    if path.expanduser().resolve() == DEFAULT_DATA_DIR.resolve():
        return "Fashion-MNIST"
    return path.name or str(path)


def default_val_size(num_train: int) -> int:
    """How many of ``num_train`` training images are held out for validation by default."""
    return min(DEFAULT_VAL_CAP, int(num_train * DEFAULT_VAL_FRACTION))


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Float32 one-hot encoding of integer labels."""
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """The data path to use: ``path``, else ``$DLSYS_DATA``, else Debian's Fashion-MNIST."""
    if path is not None:
        return Path(path)
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env) if env else DEFAULT_DATA_DIR


def open_regular_file(path: Path) -> int:
    """A descriptor of ``path`` opened for reading, blocking, when it is a regular file; a
    DataError naming it otherwise (a device such as ``/dev/zero`` would never end, a FIFO
    would block before anything could be said about it)."""
    try:
        # Non-blocking so that opening a FIFO returns at once, to be refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{path}: not a regular file")
    os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def _open_data(path: Path) -> Iterator[IO[bytes]]:
    """The file as a stream of bytes, gunzipped as it is read when its name ends in ``.gz``.

    Only a regular file is opened: a device such as ``/dev/zero`` would never end, and a FIFO
    would block before anything could be said about it.
    """
    with os.fdopen(open_regular_file(path), "rb") as raw:
        gzipped = path.suffix == ".gz"
        try:
            yield gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        except (OSError, EOFError, zlib.error) as e:
            # BadGzipFile is an OSError; a cut-off stream surfaces as EOFError.
            if gzipped:
                raise DataError(f"{path}: corrupt gzip data ({e})") from None
            raise DataError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") \
                from None


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (plain or ``.gz``) as a uint8 array.

    Reads no more than the header says the file holds, plus one byte to detect trailing data,
    so a small ``.gz`` that expands to gigabytes costs no more memory than an honest file.
    """
    path = Path(path)
    with _open_data(path) as stream:
        head = read_up_to(stream, 4)
        if len(head) < 4:
            raise DataError(f"{path}: truncated: {len(head)} bytes, too short for an IDX "
                            "header")
        magic = int.from_bytes(head, "big")
        if magic >> 16 != 0 or (magic >> 8) & 0xFF != 0x08:
            raise DataError(f"{path}: wrong magic number 0x{magic:08x}, not an IDX file of "
                            "unsigned bytes")
        if expected_magic is not None and magic != expected_magic:
            raise DataError(f"{path}: wrong magic number 0x{magic:08x}, expected "
                            f"0x{expected_magic:08x}")
        ndim = magic & 0xFF
        header = 4 + 4 * ndim
        raw_dims = read_up_to(stream, 4 * ndim)
        if len(raw_dims) < 4 * ndim:
            raise DataError(f"{path}: truncated: {4 + len(raw_dims)} bytes, header needs "
                            f"{header}")
        dims = tuple(int.from_bytes(raw_dims[4 * i:4 * i + 4], "big") for i in range(ndim))
        size = math.prod(dims)
        data = read_up_to(stream, size)
        if len(data) < size:
            raise DataError(f"{path}: truncated: dimensions {dims} need {size} bytes of data, "
                            f"file has {len(data)}")
        if stream.read(1):
            raise DataError(f"{path}: trailing bytes: dimensions {dims} need {size} bytes "
                            "of data, file has more")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find_idx_file(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        # Whatever exists under the name is taken, so that read_idx can say what is wrong
        # with a directory or device there rather than call it missing.
        if os.path.lexists(directory / name):
            return directory / name
    raise DataError(f"{directory}: not an MNIST data folder: it has no {stem} (nor "
                    f"{stem}.gz); expected the four files {', '.join(IDX_FILES.values())}")


def _idx_split(images_path: Path, labels_path: Path) -> Split:
    images = read_idx(images_path, _IMAGES_MAGIC)
    if images.shape[1:] != (IMAGE_ROWS, IMAGE_COLS):
        raise DataError(f"{images_path}: wrong dimensions: images are "
                        f"{'x'.join(map(str, images.shape[1:]))}, expected "
                        f"{IMAGE_ROWS}x{IMAGE_COLS}")
    labels = read_idx(labels_path, _LABELS_MAGIC)
    return _checked_split(images.reshape(len(images), NUM_PIXELS).astype(np.float32) / 255.0,
                          labels, images_path, labels_path)


def _checked_split(images: np.ndarray, labels: np.ndarray, images_src: Path,
                   labels_src: Path) -> Split:
    if len(images) != len(labels):
        raise DataError(f"{images_src} has {len(images)} images but {labels_src} has "
                        f"{len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{labels_src}: labels must lie in 0..{NUM_CLASSES - 1}, found "
                        f"{labels.min()}..{labels.max()}")
    return Split(np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64))


def load_idx_dir(directory: str | os.PathLike) -> tuple[Split, Split]:
    """The training and test splits from the four MNIST IDX files in ``directory``."""
    directory = Path(directory)
    paths = {key: _find_idx_file(directory, stem) for key, stem in IDX_FILES.items()}
    return (_idx_split(paths["train_images"], paths["train_labels"]),
            _idx_split(paths["test_images"], paths["test_labels"]))


_EXPECTED_DATA = ("expected a folder holding the four MNIST IDX files (plain or .gz) or a "
                  "pickled (train, valid, test) file such as mnist.pkl.gz")


def _check_looks_like_pickle(path: Path, head: bytes) -> None:
    """Refuse, by its first bytes, a file that is some other format than a pickle.

    Unpickling an IDX file or an image fails with an opcode error that reads like a damaged
    download; what the user needs to hear is what ``--data`` takes instead.
    """
    if head[:3] == b"\0\0\x08":
        raise DataError(f"{path}: a single IDX file; {_EXPECTED_DATA}: name the folder that "
                        f"holds it and the three others ({', '.join(IDX_FILES.values())})")
    if head[:2] == b"\x1f\x8b":
        raise DataError(f"{path}: gzip-compressed, but its name does not end in .gz; rename "
                        "it so that it is decompressed")
    # Every pickle of protocol 2 or later (the classic mnist.pkl.gz is protocol 2) starts with
    # the PROTO opcode; older protocols start with one of a few ASCII opcodes.
    if not head or head[:1] not in (b"\x80", b"(", b"]", b")", b"}", b"c"):
        raise DataError(f"{path}: not a pickle nor an IDX file; {_EXPECTED_DATA}")


def load_pickle(path: str | os.PathLike) -> tuple[Split, Split]:
    """The training (train + valid, 60000 images) and test splits from a ``mnist.pkl.gz``.

    The file holds ``(train, valid, test)``, each ``(images float Nx784 in [0, 1], labels)``;
    the valid part is appended to train so that the split is chosen by ``--val-size`` as for
    IDX files (the default, 10000 of these 60000, gives back the pickle's own split).
    """
    path = Path(path)
    with _open_data(path) as stream:
        head = read_up_to(stream, 4)
        _check_looks_like_pickle(path, head)
        # Not unpickled: read opcode by opcode, numpy arrays in tuples and nothing else, no
        # more data than their shapes declare (see dlsys.data.array_pickle).
        parts = read_arrays(stream, str(path), _PICKLE_ARRAYS, MAX_PICKLE_BYTES, bytes(head))
    if not (isinstance(parts, tuple) and len(parts) == 3
            and all(isinstance(p, tuple) and len(p) == 2
                    and all(isinstance(a, np.ndarray) for a in p) for p in parts)):
        raise DataError(f"{path}: expected a tuple (train, valid, test) of (images, labels) pairs")
    splits = []
    for name, (images, labels) in zip(("train", "valid", "test"), parts):
        if images.ndim != 2 or images.shape[1] != NUM_PIXELS:
            raise DataError(f"{path}: wrong dimensions: {name} images have shape "
                            f"{images.shape}, expected (N, {NUM_PIXELS})")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: {name} labels must be a 1-D integer array, got "
                            f"{labels.dtype} of shape {labels.shape}")
        # Real numbers in [0, 1], as the format promises: strings would fail inside numpy,
        # complex values lose their imaginary part, and a NaN or 0..255 pixels train silently
        # on garbage.
        if images.dtype.kind not in "fiu":
            raise DataError(f"{path}: {name} images must be real numbers, got {images.dtype}")
        if not np.isfinite(images).all():
            raise DataError(f"{path}: {name} images hold NaN or infinite pixel values")
        if images.size and (images.min() < 0 or images.max() > 1):
            raise DataError(f"{path}: {name} pixel values must lie in [0, 1], found "
                            f"{images.min()}..{images.max()}")
        where = Path(f"{path}[{name}]")
        splits.append(_checked_split(images, labels, where, where))
    train, valid, test = splits
    return Split(np.concatenate([train.images, valid.images]),
                 np.concatenate([train.labels, valid.labels])), test


def load_dataset(path: str | os.PathLike | None = None,
                 val_size: int | None = None) -> Dataset:
    """Load a data set and hold out its last ``val_size`` training images for validation.

    ``path`` is a directory of IDX files or a ``.pkl.gz``/``.pkl`` file; ``None`` means
    ``$DLSYS_DATA`` or else Fashion-MNIST from ``/usr/share/datasets/fashion-mnist``.
    ``val_size`` ``None`` holds out :func:`default_val_size` images; 0 holds out none (the
    validation split is then empty).
    """
    path = resolve_data_path(path)
    if path.is_dir():
        train, test = load_idx_dir(path)
    elif path.is_file():
        train, test = load_pickle(path)
    elif path.exists():
        raise DataError(f"{path}: not a directory of IDX files nor a regular pickle file")
    else:
        raise DataError(f"{path}: no such file or directory")
    if val_size is None:
        val_size = default_val_size(len(train))
    if not 0 <= val_size < len(train):
        raise DataError(f"{path}: validation size {val_size} must be smaller than the "
                        f"{len(train)} training images (0 holds out none)")
    cut = len(train) - val_size
    return Dataset(train=Split(train.images[:cut], train.labels[:cut]),
                   val=Split(train.images[cut:], train.labels[cut:]),
                   test=test, source=str(path))
