"""The restricted pickle reader: numpy's layouts of every protocol and era load, anything
else is refused before it is built."""

import gzip
import io
import pickle
import struct

import numpy as np
import pytest

from dlsys.data import array_pickle
from dlsys.data.array_pickle import read_arrays
from dlsys.data.mnist import load_dataset
from dlsys.errors import DataError

NAMES = tuple(f"{part} {what}" for part in ("train", "valid", "test")
              for what in ("images", "labels"))


def _int(value: int) -> bytes:
    """BININT1, BININT2 or BININT, as Python 2's cPickle chose."""
    if value < 256:
        return b"K" + bytes([value])
    if value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_str(data: bytes) -> bytes:
    """A Python 2 str: SHORT_BINSTRING under 256 bytes, else BINSTRING."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _python2_array(array: np.ndarray, memo: dict[bytes, int]) -> bytes:
    """What Python 2's cPickle (protocol 2) wrote for an ndarray, as in the classic
    mnist.pkl.gz: globals by GLOBAL lines, memoised (BINPUT, later BINGET), str data, and
    dtype arguments as the ints 0 and 1."""
    def global_(line: bytes) -> bytes:
        if line in memo:
            return b"h" + bytes([memo[line]])
        memo[line] = len(memo) + 1
        return b"c" + line + b"q" + bytes([memo[line]])

    dims = b"".join(_int(d) for d in array.shape)
    shape = b"(" + dims + b"t" if array.ndim > 3 else dims + b"\x85\x86\x87"[array.ndim - 1:
                                                                           array.ndim]
    dtype = (global_(b"numpy\ndtype\n") + _py2_str(array.dtype.str[1:].encode())
             + b"K\x00K\x01\x87R" + b"(K\x03" + _py2_str(b"<") + b"NNN" + b"J\xff\xff\xff\xff"
             + b"J\xff\xff\xff\xffK\x00tb")
    return (global_(b"numpy.core.multiarray\n_reconstruct\n") + global_(b"numpy\nndarray\n")
            + b"K\x00\x85" + _py2_str(b"b") + b"\x87R"
            + b"(K\x01" + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb")


def python2_pickle(parts) -> bytes:
    """``(train, valid, test)`` pairs pickled as Python 2 wrote them."""
    memo: dict[bytes, int] = {}
    body = b"".join(_python2_array(images, memo) + _python2_array(labels, memo) + b"\x86"
                    for images, labels in parts)
    return b"\x80\x02" + body + b"\x87."


def _parts(sizes=(12, 3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))
                 for n in sizes)


def test_python2_classic_layout_loads(tmp_path):
    parts = _parts()
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(python2_pickle(parts)))
    # The fixture is what the format says: Python's own unpickler reads it back.
    for (images, labels), (read_images, read_labels) in zip(
            parts, pickle.loads(python2_pickle(parts), encoding="latin1")):
        np.testing.assert_array_equal(images, read_images)
        np.testing.assert_array_equal(labels, read_labels)
    data = load_dataset(path, val_size=3)
    np.testing.assert_array_equal(data.train.images, parts[0][0])
    np.testing.assert_array_equal(data.val.labels, parts[1][1])
    np.testing.assert_array_equal(data.test.images, parts[2][0])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_protocol_with_shared_and_fortran_arrays(protocol):
    (images, labels), (valid, _), _ = _parts()
    fortran = np.asfortranarray(valid)
    empty = (np.zeros((0, 784), np.float32), np.zeros(0, np.int64))
    parts = ((images, labels), (fortran, labels), empty)
    read = read_arrays(io.BytesIO(pickle.dumps(parts, protocol=protocol)), "f", NAMES, 1 << 30)
    for expected, got in zip(sum(parts, ()), sum(read, ())):
        assert got.dtype == expected.dtype and got.flags.writeable
        np.testing.assert_array_equal(got, expected)
    # The same array twice is one array, as pickle would give back.
    assert read[0][1] is read[1][1]


def _refusal(data: bytes, max_bytes: int = 1 << 30) -> str:
    with pytest.raises(DataError) as info:
        read_arrays(io.BytesIO(data), "f", NAMES, max_bytes)
    return str(info.value)


def test_a_length_the_layout_does_not_declare_is_refused_before_it_is_read():
    # Protocol 5 puts the data first: a 1 TiB bytearray is refused by its length prefix.
    head = (b"\x80\x05\x8c\x13numpy._core.numeric\x8c\x0b_frombuffer\x93("
            b"\x96" + struct.pack("<Q", 1 << 40))
    assert "a pickle string of 1099511627776 bytes" in _refusal(head)
    # Protocol 3: shape (2, 784) float32 declares 6272 bytes, the string claims 1 GiB.
    honest = pickle.dumps(np.zeros((2, 784), np.float32), protocol=3)
    lying = honest.replace(b"B" + struct.pack("<I", 6272), b"B" + struct.pack("<I", 1 << 30))
    assert "a pickle string of 1073741824 bytes" in _refusal(lying[:lying.index(b"B") + 5])
    # A name where only a short string belongs.
    assert "a pickle string of 100000 bytes" in _refusal(b"\x80\x03X" + struct.pack("<I", 100000))


def test_a_shape_over_the_bound_is_refused_by_its_declaration():
    data = pickle.dumps(((np.zeros((10, 784), np.float32),),), protocol=2)
    message = _refusal(data, max_bytes=10000)
    assert "train images: shape (10, 784) of float32 declares 31360 bytes" in message


@pytest.mark.parametrize("data, words", [
    (b"\x80\x02(" + b"N" * 5000, f"more than {array_pickle.MAX_OPCODES} pickle opcodes"),
    (b"(lp0\n.", "protocol 0 or 1"),
    (pickle.dumps({"a": 1}, protocol=4), "EMPTY_DICT"),
    (pickle.dumps(1.5, protocol=2), "BINFLOAT"),
    (pickle.dumps((np.zeros(2),), protocol=2) + b"\x00", "trailing bytes"),
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nK\x01\x85R.",
     "pickle calls numpy.core.multiarray._reconstruct with arguments other than numpy's"),
    (b"\x80\x02h\x05.", "GET 5"),
    (b"\x80\x02t.", "TUPLE without a MARK"),
    (b"\x80\x02c" + b"a" * 300 + b"\n", "a pickle line of over 256 bytes"),
])
def test_anything_but_numpy_arrays_in_tuples_is_refused(data, words):
    assert words in _refusal(data)


def test_more_arrays_than_the_layout_holds():
    arrays = tuple(np.zeros(1, np.int64) for _ in range(7))
    assert "more than the 6 arrays" in _refusal(pickle.dumps(arrays, protocol=2))
