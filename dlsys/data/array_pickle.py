"""Reading numpy arrays out of a pickle without unpickling it.

``pickle.load`` calls whatever a file names and builds every object the file describes
before anything can be checked: a 500 KB file of small ints becomes gigabytes of Python
objects. :func:`read_arrays` instead walks the opcodes with :func:`pickletools.genops`,
which decodes them without executing anything, and keeps only what numpy writes for arrays
in tuples:

- protocol 2-4: ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` then ``BUILD``
  with ``(1, shape, dtype, fortran, data)``; ``dtype`` is ``numpy.dtype(descr, align,
  copy)`` then ``BUILD`` with its state. Python 2 wrote the data as a ``str`` (``BINSTRING``),
  Python 3 at protocol 2 as ``_codecs.encode(text, 'latin1')``.
- protocol 5: ``numpy.core.numeric._frombuffer(data, dtype, shape, order)``.

Any other opcode or callable is refused with a :class:`~dlsys.errors.DataError` before it
builds anything. Bytes are counted before they are read: an array's data may be no longer
than the shape and dtype declared before it (protocol 2-4), or than what is left of
``max_bytes`` (protocol 5, whose data comes first); every other string is short, and the
number of opcodes is bounded, so memory follows the arrays the file declares.
"""

from __future__ import annotations

import enum
import math
import pickletools
from collections.abc import Callable, Sequence
from typing import IO

import numpy as np

from dlsys.errors import DataError

# The classic six arrays take about 120 opcodes (protocol 2 from Python 3, the longest);
# this bounds the stack, the memo and the small strings a file can make us keep.
MAX_OPCODES = 4096
# Module and type names, dtype descriptors, byte orders: none is longer than this.
MAX_TEXT = 256
# Numbers only: a dtype of strings, objects or records is no image nor label.
_DESCRS = frozenset(f"{kind}{size}" for kind, sizes in (("b", "1"), ("i", "1248"),
                                                        ("u", "1248"), ("f", "248"))
                    for size in sizes)
_CHUNK = 1 << 20


class _Global(enum.Enum):
    """The only callables a numpy array pickle names."""

    RECONSTRUCT = "numpy.core.multiarray._reconstruct"
    NDARRAY = "numpy.ndarray"
    DTYPE = "numpy.dtype"
    ENCODE = "_codecs.encode"
    BYTES = "builtins.bytes"
    FROMBUFFER = "numpy.core.numeric._frombuffer"


# numpy 2 writes numpy._core; numpy 1 (and Python 2's numpy) numpy.core.
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _Global.RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _Global.RECONSTRUCT,
    ("numpy", "ndarray"): _Global.NDARRAY,
    ("numpy", "dtype"): _Global.DTYPE,
    ("_codecs", "encode"): _Global.ENCODE,
    # Python 3 at protocol 2 writes empty data (an empty array's) as bytes().
    ("__builtin__", "bytes"): _Global.BYTES,
    ("builtins", "bytes"): _Global.BYTES,
    ("numpy.core.numeric", "_frombuffer"): _Global.FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _Global.FROMBUFFER,
}


class _Pending:
    """What ``REDUCE`` made of ``_reconstruct`` or ``dtype``, finished by ``BUILD``; the memo
    keeps this very object, so a later ``GET`` of it must find what ``BUILD`` made."""

    def __init__(self, descr: str | None = None):
        self.descr = descr  # the dtype's, None for an array
        self.built: np.ndarray | np.dtype | None = None


_MARK = object()
# Stands in the memo for a bulky string (an array's data): no numpy pickle fetches one back,
# and keeping it would double the memory of protocol 2's text-encoded data.
_SPENT = object()


def read_up_to(stream: IO[bytes], size: int) -> bytearray:
    """At most ``size`` bytes, fewer only at the end of the stream.

    Read in chunks, so that memory follows the data actually present, not a size a header
    claims (a file that lies about its size must not make us allocate it). A bytearray, so
    that arrays viewing it are writable without a copy.
    """
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(min(_CHUNK, size - len(data)))
        if not chunk:
            break
        data += chunk
    return data


class _BoundedStream:
    """The pickle's bytes as :func:`pickletools.genops` reads them, each read first checked
    against ``allowance()``, so that a length prefix never makes us read what the structure
    does not declare."""

    def __init__(self, stream: IO[bytes], head: bytes, allowance: Callable[[], int],
                 where: str):
        self._stream, self._head = stream, head
        self._allowance, self._where = allowance, where
        self._pos = 0

    def tell(self) -> int:
        return self._pos

    def read(self, size: int) -> bytearray:
        limit = self._allowance()
        if size > limit:
            raise DataError(f"{self._where}: a pickle string of {size} bytes at byte "
                            f"{self._pos}, more than the {limit} the layout and the data "
                            f"file's bound allow there")
        data = bytearray(self._head[:size])  # writable, for the arrays that view it
        self._head = self._head[len(data):]
        if not data:  # the usual case: no copy of what is read
            data = read_up_to(self._stream, size)
        elif len(data) < size:
            data += read_up_to(self._stream, size - len(data))
        self._pos += len(data)
        return data

    def readline(self) -> bytes:
        # Only GLOBAL's two names are read as lines; a real one is a few dozen bytes.
        end = self._head.find(b"\n") + 1 or len(self._head)
        line, self._head = self._head[:end], self._head[end:]
        if not line.endswith(b"\n"):
            line += self._stream.readline(MAX_TEXT + 1)
        if len(line) > MAX_TEXT:
            raise DataError(f"{self._where}: a pickle line of over {MAX_TEXT} bytes at "
                            f"byte {self._pos}")
        self._pos += len(line)
        return bytes(line)


class _Reader:
    """A stack machine over the opcodes that knows only tuples, small values, dtypes and
    arrays; ``names`` say, in the order the arrays come, what each one is."""

    def __init__(self, where: str, names: Sequence[str], max_bytes: int):
        self.where, self.names = where, names
        self.budget = max_bytes
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.arrays = 0

    def fail(self, what: str) -> DataError:
        return DataError(f"{self.where}: {what}")

    def _name(self) -> str:
        """What the next array is, for messages."""
        return self.names[self.arrays] if self.arrays < len(self.names) else \
            f"array {self.arrays + 1}"

    def allowance(self) -> int:
        """How many bytes the next string may have, given what the stack declares."""
        start = self.marks[-1] if self.marks else len(self.stack)
        frame = self.stack[start:]
        encoded = bool(frame) and frame[-1] is _Global.ENCODE
        if encoded:
            frame = frame[:-1]
        if len(frame) == 4 and _is_int(frame[0]) and frame[0] == 1 \
                and isinstance(frame[2], np.dtype):
            # An array's state (1, shape, dtype, fortran) whose data comes next: no more
            # than the shape and dtype declare; text-encoded (protocol 2 from Python 3),
            # each byte of it is at most two bytes of UTF-8.
            size = self._declared(frame[1], frame[2])
            return max(MAX_TEXT, 2 * size if encoded else size)
        if not frame and start > 0 and self.stack[start - 1] is _Global.FROMBUFFER:
            # Protocol 5 writes the data before its dtype and shape: what is left of the
            # budget, and its length is checked against them once they come.
            return max(MAX_TEXT, self.budget)
        return MAX_TEXT

    def _declared(self, shape, dtype: np.dtype) -> int:
        if not (_is_int_tuple(shape) and len(shape) <= 32 and all(d >= 0 for d in shape)):
            raise self.fail(f"{self._name()}: shape {shape!r} is not a tuple of sizes")
        size = math.prod(shape) * dtype.itemsize
        if size > self.budget:
            raise self.fail(f"{self._name()}: shape {shape} of {dtype} declares {size} "
                            f"bytes, more than the {self.budget} left of the data file's "
                            f"bound")
        return size

    def run(self, stream: _BoundedStream) -> object:
        ops = pickletools.genops(stream)
        for count, (opcode, arg, pos) in enumerate(ops):
            if count >= MAX_OPCODES:
                raise self.fail(f"more than {MAX_OPCODES} pickle opcodes; numpy arrays in "
                                f"tuples take a few hundred")
            if count == 0 and (opcode.name != "PROTO" or arg < 2):
                raise self.fail("a pickle of protocol 0 or 1 (text); numpy arrays are "
                                "read from protocol 2 or later")
            if opcode.name == "STOP":
                if len(self.stack) != 1 or self.marks:
                    raise self.fail("pickle ends with an unfinished stack")
                return self.stack.pop()
            self.step(opcode.name, arg, pos)
        raise self.fail("pickle ends before STOP")  # genops raises first; for type checkers

    def step(self, name: str, arg, pos: int) -> None:
        stack = self.stack
        if name in ("PROTO", "FRAME"):
            return
        if name == "MARK":
            self.marks.append(len(stack))
        elif name in ("BININT1", "BININT2", "BININT", "LONG1", "SHORT_BINUNICODE",
                      "BINUNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING",
                      "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"):
            # genops decodes Python 2's str as latin1 text; numpy wants its bytes back.
            stack.append(bytearray(arg, "latin1") if name.endswith("BINSTRING") else arg)
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "TUPLE"):
            count = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}.get(name)
            start = self._pop_mark() if count is None else len(stack) - count
            if start < (self.marks[-1] if self.marks else 0):
                raise self.fail(f"pickle opcode {name} at byte {pos} reaches below its mark")
            items = tuple(stack[start:])
            del stack[start:]
            stack.append(items)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            module, _, attr = arg.partition(" ") if name == "GLOBAL" else self._pop_names()
            found = _GLOBALS.get((module, attr))
            if found is None:
                raise self.fail(f"refusing to load {module}.{attr}: a data file holds numpy "
                                f"arrays, not code")
            stack.append(found)
        elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self._top(name, pos)
            value = stack[-1]
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = \
                _SPENT if _bulky(value) else value
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(self._fetch(arg, pos))
        elif name == "REDUCE":
            func, args = self._pop(2, name, pos)
            stack.append(self._call(func, args))
        elif name == "BUILD":
            obj, state = self._pop(2, name, pos)
            stack.append(self._build(obj, state))
        else:
            raise self.fail(f"pickle opcode {name} at byte {pos}: not part of numpy arrays "
                            f"in tuples, refused before it builds anything")

    def _top(self, name: str, pos: int) -> None:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise self.fail(f"pickle opcode {name} at byte {pos} on an empty stack")

    def _pop(self, count: int, name: str, pos: int) -> list:
        if len(self.stack) - count < (self.marks[-1] if self.marks else 0):
            raise self.fail(f"pickle opcode {name} at byte {pos} on too short a stack")
        items = self.stack[-count:]
        del self.stack[-count:]
        return items

    def _pop_mark(self) -> int:
        if not self.marks:
            raise self.fail("pickle TUPLE without a MARK")
        return self.marks.pop()

    def _pop_names(self) -> tuple[str, str, str]:
        module, attr = self._pop(2, "STACK_GLOBAL", -1)
        if not (isinstance(module, str) and isinstance(attr, str)):
            raise self.fail("pickle STACK_GLOBAL of something other than two names")
        return module, ".", attr

    def _fetch(self, key: int, pos: int) -> object:
        value = self.memo.get(key, _SPENT)
        if isinstance(value, _Pending):
            value = value.built
        if value is None or value is _SPENT:
            raise self.fail(f"pickle GET {key} at byte {pos} of nothing numpy would refer "
                            f"back to")
        return value

    def _call(self, func, args) -> object:
        # Type checks before any comparison: an ndarray compared with == gives an array.
        count = len(args) if isinstance(args, tuple) else -1
        if func is _Global.RECONSTRUCT and count == 3 and args[0] is _Global.NDARRAY \
                and _is_int_tuple(args[1]) and isinstance(args[2], (bytes, bytearray)) \
                and args[1] == (0,) and args[2] == b"b":
            return _Pending()
        if func is _Global.DTYPE and count == 3 and _is_text(args[0]):
            return _Pending(_text(args[0]))
        if func is _Global.ENCODE and count == 2 and isinstance(args[0], str) \
                and _is_text(args[1]) and _text(args[1]) == "latin1":
            try:
                return bytearray(args[0], "latin1")
            except UnicodeEncodeError:
                raise self.fail("array data that is not latin1 text") from None
        if func is _Global.BYTES and count == 0:
            return bytearray()
        if func is _Global.FROMBUFFER and count == 4 and isinstance(args[1], np.dtype) \
                and _is_text(args[3]) and _text(args[3]) in ("C", "F"):
            return self._array(args[0], args[1], args[2], _text(args[3]) == "F")
        what = func.value if isinstance(func, _Global) else type(func).__name__
        raise self.fail(f"pickle calls {what} with arguments other than numpy's")

    def _build(self, obj, state) -> np.ndarray | np.dtype:
        if isinstance(obj, _Pending) and obj.built is None and isinstance(state, tuple):
            if obj.descr is not None and len(state) in (8, 9):
                obj.built = self._dtype(obj.descr, state)
                return obj.built
            if obj.descr is None and len(state) == 5 and _is_int(state[0]) \
                    and state[0] == 1 and isinstance(state[2], np.dtype) \
                    and isinstance(state[3], int) and state[3] in (0, 1):
                obj.built = self._array(state[4], state[2], state[1], bool(state[3]))
                return obj.built
        raise self.fail("pickle BUILD of something other than a numpy array or dtype")

    def _dtype(self, descr: str, state: tuple) -> np.dtype:
        # (version, byte order, subarray, names, fields, itemsize, alignment, flags[, meta])
        order = _text(state[1]) if _is_text(state[1]) else "?"
        if descr not in _DESCRS or order not in ("<", ">", "|", "=") \
                or any(part is not None for part in state[2:5]):
            raise self.fail(f"{self._name()} must be real numbers, got dtype {order}{descr}")
        return np.dtype(order + descr if order in "<>" else descr)

    def _array(self, data, dtype: np.dtype, shape, fortran: bool) -> np.ndarray:
        size = self._declared(shape, dtype)
        if not isinstance(data, (bytes, bytearray)) or len(data) != size:
            held = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
            raise self.fail(f"{self._name()}: shape {shape} of {dtype} needs {size} bytes "
                            f"of data, the file holds {held}")
        if self.arrays >= len(self.names):
            raise self.fail(f"more than the {len(self.names)} arrays of the layout")
        self.budget -= size
        self.arrays += 1
        flat = np.frombuffer(data, dtype)  # a view: the bytes read are the array's memory
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(_is_int(v) for v in value)


def _is_text(value: object) -> bool:
    """A short name: Python 3 writes str, Python 2's str comes back as bytes."""
    return isinstance(value, (str, bytes, bytearray)) and len(value) <= MAX_TEXT


def _text(value: str | bytes | bytearray) -> str:
    return value if isinstance(value, str) else value.decode("latin1")


def _bulky(value: object) -> bool:
    """An array's data, or the tuple of arguments carrying it."""
    items = value if isinstance(value, tuple) else (value,)
    return any(isinstance(v, (str, bytes, bytearray)) and len(v) > MAX_TEXT for v in items)


def read_arrays(stream: IO[bytes], where: str, names: Sequence[str], max_bytes: int,
                head: bytes = b"") -> object:
    """The tuples of numpy arrays a pickle holds, read without unpickling it.

    ``head``: bytes already read from ``stream`` (to recognise the format). ``names``: what
    each array is, in the order they come (at most that many are accepted), for messages
    such as ``train images must be real numbers``. ``max_bytes``: the arrays' data, all together.
    Anything else than numpy arrays in tuples, and trailing bytes after the pickle, raise
    a :class:`DataError` naming ``where``.
    """
    reader = _Reader(where, names, max_bytes)
    bounded = _BoundedStream(stream, head, reader.allowance, where)
    try:
        result = reader.run(bounded)
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, DataError):
            raise
        # genops' own complaints: an unknown opcode, a string cut short, no STOP.
        raise DataError(f"{where}: corrupt pickle ({e})") from None
    if bounded.read(1):
        raise DataError(f"{where}: trailing bytes after the pickle's STOP")
    return result
