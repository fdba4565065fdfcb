"""Text for a character-level language model: a corpus read as UTF-8, its vocabulary (the
sorted set of its characters), the characters as int64 ids, a held-out validation tail, and
random (B, T) batches of inputs and next-character targets.

The default corpus is Debian's ``fortunes`` package: every plain-text fortune file in
``/usr/share/games/fortunes`` (not the ``.dat`` indexes that ``strfile`` writes, nor the
``.u8`` symlinks to the same files), about 2.6 million characters. There the ``%`` line
that ends each fortune becomes a blank line: a blank line already ends a paragraph in any
prose, so the model learns where a fortune stops without a separator that would otherwise
follow almost every line end, samples read as text rather than being strewn with ``%``
lines, and ``%`` keeps its one meaning (per cent) in the vocabulary. The fortunes are then
put in an order drawn once from a fixed seed (the same for every run): the validation tail
samples every file, instead of being the last files of the alphabet (``work``,
``zippy``), whose style no other file has.

Any other corpus (``--data FILE``, or a folder read like the fortunes') is taken as it is.
Every fault is a :class:`~dlsys.errors.DataError` naming the file: missing, not a regular
file, too large, empty, not UTF-8 (with the byte offset of the first bad byte), or too
short for one context and the character after it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlsys.data.mnist import open_regular_file
from dlsys.errors import ArgumentError, DataError

DEFAULT_TEXT_DIR = Path("/usr/share/games/fortunes")
# strfile's random-access indexes beside each fortune file: binary, not text.
INDEX_SUFFIX = ".dat"
# The validation tail: this fraction of the corpus, at most the cap (32 Ki characters, 256
# windows of 128: evaluated in a few seconds after every epoch).
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_VAL_CAP = 1 << 15
# A corpus is read whole into memory, as text and as int64 ids (9 bytes per character):
# 256 MiB of text is 2.3 GiB of ids. Larger files are refused before they are read.
MAX_CORPUS_BYTES = 256 << 20
# The fixed seed of the fortunes' order (see the module docstring): part of the corpus,
# not of a run, so every run of every seed holds out the same tail.
FORTUNE_ORDER_SEED = 25
_SEPARATOR = re.compile(r"^%\n", re.MULTILINE)


@dataclass(frozen=True)
class Vocabulary:
    """The characters a model knows, in sorted order: id ``i`` is ``chars[i]``."""

    chars: str

    @classmethod
    def of(cls, text: str) -> Vocabulary:
        """The vocabulary of ``text``: its distinct characters, sorted by code point."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that are not in the vocabulary, in order."""
        known = set(self.chars)
        return sorted(set(text) - known)

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        """``text`` as int64 ids; a DataError listing every character the vocabulary lacks
        (``what`` names the text in the message: "the prompt")."""
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise DataError(f"{what} has characters the model's vocabulary lacks: "
                            f"{shown}{more} (the vocabulary holds the {len(self)} characters "
                            f"of its training corpus)")
        index = {c: i for i, c in enumerate(self.chars)}
        return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The characters of ``ids``."""
        return "".join(self.chars[int(i)] for i in ids)


@dataclass(frozen=True)
class TextData:
    """A corpus as ids: the training part, the validation tail (empty with ``val_size``
    0), its vocabulary and where it came from."""

    train: np.ndarray
    val: np.ndarray
    vocab: Vocabulary
    source: str

    @property
    def name(self) -> str:
        """A short name for titles: ``fortunes`` for Debian's, else the file's name."""
        path = Path(self.source)
        if path.expanduser().resolve() == DEFAULT_TEXT_DIR.resolve():
            return "fortunes"
        return path.name or str(path)


def _read_bytes(path: Path) -> bytes:
    """A regular file's bytes (a device or FIFO would never end), at most
    ``MAX_CORPUS_BYTES``."""
    with os.fdopen(open_regular_file(path), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_CORPUS_BYTES:
            raise DataError(f"{path}: {size} bytes, more than the "
                            f"{MAX_CORPUS_BYTES >> 20} MiB a corpus may hold")
        return handle.read(MAX_CORPUS_BYTES + 1)


def _decode(path: Path, data: bytes) -> str:
    """``data`` as UTF-8 text; a DataError at the first byte that is not, or at a NUL
    (which no text file holds: the sign of a binary file)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not UTF-8 text: byte {e.start} (line {line}) is "
                        f"0x{data[e.start]:02x}") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path}: not text: a NUL byte at byte {nul}")
    # One line ending for every file: the vocabulary should not hold \r for some of them.
    return text.replace("\r\n", "\n")


def corpus_files(folder: Path) -> list[Path]:
    """The plain-text files of a fortunes folder, by name: regular files that are not
    ``.dat`` indexes; symlinks (the ``.u8`` names of the same files) and sub-folders are
    skipped."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"{folder}: cannot list: {e.strerror or e}") from None
    return [entry for entry in entries
            if not entry.is_symlink() and entry.is_file() and entry.suffix != INDEX_SUFFIX]


def _fortunes(folder: Path) -> str:
    """A folder of fortune files as one text: each fortune (the lines between ``%`` lines)
    followed by a blank line, in an order drawn from ``FORTUNE_ORDER_SEED``."""
    files = corpus_files(folder)
    if not files:
        raise DataError(f"{folder}: no text files in the folder (fortune files are plain "
                        f"text beside their {INDEX_SUFFIX} indexes)")
    fortunes: list[str] = []
    for path in files:
        text = _decode(path, _read_bytes(path))
        pieces = _SEPARATOR.split(text if text.endswith("\n") else text + "\n")
        fortunes += [piece for piece in pieces if piece.strip()]
    order = np.random.default_rng(FORTUNE_ORDER_SEED).permutation(len(fortunes))
    return "".join(fortunes[i] + "\n" for i in order)


def resolve_corpus(path: str | os.PathLike | None) -> Path:
    """The corpus ``--data`` names, else Debian's fortunes."""
    return DEFAULT_TEXT_DIR if path is None else Path(path)


def read_corpus(path: str | os.PathLike | None = None) -> tuple[str, str]:
    """The text of a corpus and its source (the path as given): a UTF-8 file as it is, a
    folder as fortune files (see the module docstring), ``None`` Debian's fortunes."""
    path = resolve_corpus(path)
    if path.is_dir():
        text = _fortunes(path)
    elif path.exists():
        text = _decode(path, _read_bytes(path))
    elif path == DEFAULT_TEXT_DIR:
        raise DataError(f"{path}: no such folder; install Debian's fortunes package (sudo "
                        f"apt-get install fortunes, or make data) or give --data FILE")
    else:
        raise DataError(f"{path}: no such file or folder")
    if not text:
        raise DataError(f"{path}: the corpus is empty")
    return text, str(path)


def default_val_size(length: int) -> int:
    """How many of a corpus's ``length`` characters are held out by default."""
    return min(DEFAULT_VAL_CAP, int(length * DEFAULT_VAL_FRACTION))


def load_text(path: str | os.PathLike | None, context: int,
              val_size: int | None = None) -> TextData:
    """A corpus as ids, its last ``val_size`` characters held out (None: a tenth, at most
    ``DEFAULT_VAL_CAP``; 0: none). Both parts must hold one context and the character
    after it (``context + 1``), the least a batch or a validation window takes."""
    text, source = read_corpus(path)
    need = context + 1
    if len(text) < need:
        raise DataError(f"{source}: {len(text)} characters, shorter than one context and "
                        f"the character after it ({context} + 1)")
    if val_size is None:
        val_size = default_val_size(len(text))
        if 0 < val_size < need:  # a small corpus: hold out one window if it can spare it
            val_size = need if len(text) >= 2 * need else 0
    if val_size and not need <= val_size <= len(text) - need:
        raise DataError(f"{source}: validation size {val_size} must be 0 or in "
                        f"{need}..{len(text) - need}: both parts of its {len(text)} "
                        f"characters need one context and the character after it "
                        f"({context} + 1)")
    vocab = Vocabulary.of(text)
    ids = vocab.encode(text, source)
    cut = len(ids) - val_size
    return TextData(train=ids[:cut], val=ids[cut:], vocab=vocab, source=source)


def random_batch(ids: np.ndarray, rng: np.random.Generator, batch_size: int,
                 context: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` windows of ``context`` ids at positions drawn from ``rng``, and each
    window's next-character targets (the same window one character on), both (B, T)
    int64."""
    if not 0 < context < len(ids):
        raise ArgumentError(f"context {context} must be in 1..{len(ids) - 1} for "
                            f"{len(ids)} ids")
    starts = rng.integers(0, len(ids) - context, size=batch_size)
    rows = starts[:, None] + np.arange(context + 1)
    windows = ids[rows]
    return windows[:, :-1], windows[:, 1:]


def windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Every whole window of ``context`` ids side by side (starts 0, T, 2T, ...) and its
    targets: how the validation tail is evaluated, each character once (but the first)."""
    count = (len(ids) - 1) // context
    rows = np.arange(count)[:, None] * context + np.arange(context + 1)
    stacked = ids[rows]
    return stacked[:, :-1], stacked[:, 1:]


__all__ = ["Vocabulary", "TextData", "read_corpus", "load_text", "random_batch", "windows",
           "corpus_files", "default_val_size", "resolve_corpus", "DEFAULT_TEXT_DIR"]
