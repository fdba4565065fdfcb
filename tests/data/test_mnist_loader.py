"""The MNIST loaders on synthetic files: formats, the validation split, and every data fault."""

import gzip
import os
import pickle
import time

import numpy as np
import pytest
from bombs import refusal_and_growth

from dlsys.data import array_pickle, mnist
from dlsys.data.mnist import load_dataset, one_hot, read_idx
from dlsys.errors import DataError
from dlsys.testing.synthetic import (
    idx_bytes,
    synthetic_images,
    write_idx_dataset,
    write_pickle_dataset,
)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_and_splits(tmp_path, gz):
    write_idx_dataset(tmp_path, num_train=300, num_test=50, gz=gz, seed=3)
    data = load_dataset(tmp_path, val_size=100)
    images, labels = synthetic_images(300, 3)
    assert data.train.images.shape == (200, 784) and data.val.images.shape == (100, 784)
    assert data.test.images.shape == (50, 784)
    assert data.train.images.dtype == np.float32 and data.train.labels.dtype == np.int64
    assert 0.0 <= data.train.images.min() and data.train.images.max() <= 1.0
    np.testing.assert_array_equal(data.val.labels, labels[200:])
    np.testing.assert_allclose(data.val.images[0], images[200].reshape(784) / 255.0, rtol=1e-6)
    assert data.source == str(tmp_path)


def test_one_hot_rows():
    out = one_hot(np.array([2, 0, 9]))
    assert out.dtype == np.float32 and out.shape == (3, 10)
    np.testing.assert_array_equal(out.argmax(axis=1), [2, 0, 9])
    np.testing.assert_array_equal(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_loads_train_plus_valid(tmp_path, protocol):
    path = write_pickle_dataset(tmp_path / "mnist.pkl.gz", sizes=(120, 30, 40), seed=1,
                                protocol=protocol)
    data = load_dataset(path, val_size=30)
    assert (len(data.train), len(data.val), len(data.test)) == (120, 30, 40)
    # The default-sized hold-out is exactly the pickle's own valid part.
    np.testing.assert_array_equal(data.val.labels, synthetic_images(30, 2)[1])
    assert data.train.images.dtype == np.float32


def test_default_path_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(mnist.DATA_ENV_VAR, raising=False)
    assert mnist.resolve_data_path(None) == mnist.DEFAULT_DATA_DIR
    monkeypatch.setenv(mnist.DATA_ENV_VAR, str(tmp_path))
    assert mnist.resolve_data_path(None) == tmp_path
    assert mnist.resolve_data_path("elsewhere").name == "elsewhere"


def _replace(directory, stem, data, gz=False):
    name = stem + (".gz" if gz else "")
    (directory / name).write_bytes(gzip.compress(data) if gz else data)
    return directory / name


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, **kwargs)
    return str(info.value)


def test_missing_directory(tmp_path):
    assert str(tmp_path / "nowhere") in _error(tmp_path / "nowhere")


def test_missing_file(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    assert "t10k-labels-idx1-ubyte" in _error(tmp_path, val_size=10)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_images(tmp_path, gz):
    write_idx_dataset(tmp_path, 50, 10, gz=gz)
    images, _ = synthetic_images(50, 0)
    path = _replace(tmp_path, "train-images-idx3-ubyte", idx_bytes(images)[:-7], gz)
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "truncated" in message


def test_truncated_header(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    path = _replace(tmp_path, "train-labels-idx1-ubyte", b"\x00\x00\x08\x01\x00")
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "truncated" in message


def test_trailing_bytes(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    _, labels = synthetic_images(50, 0)
    path = _replace(tmp_path, "train-labels-idx1-ubyte", idx_bytes(labels) + b"\x00")
    assert str(path) in _error(tmp_path, val_size=10)


def test_wrong_magic(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    _, labels = synthetic_images(50, 0)
    # A label file where the image file should be: valid IDX, wrong magic.
    path = _replace(tmp_path, "train-images-idx3-ubyte", idx_bytes(labels))
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "magic" in message and "0x00000801" in message


def test_not_an_idx_file(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    path = _replace(tmp_path, "t10k-images-idx3-ubyte", b"GIF89a not an idx file")
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "magic" in message


def test_wrong_dimensions(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    path = _replace(tmp_path, "train-images-idx3-ubyte",
                    idx_bytes(np.zeros((50, 27, 28), np.uint8)))
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "27x28" in message


def test_count_mismatch(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    _replace(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.zeros(49, np.uint8)))
    message = _error(tmp_path, val_size=10)
    assert "50 images" in message and "49 labels" in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message


def test_label_out_of_range(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    path = _replace(tmp_path, "t10k-labels-idx1-ubyte", idx_bytes(np.full(10, 10, np.uint8)))
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "0..9" in message


def test_corrupt_gzip(tmp_path):
    write_idx_dataset(tmp_path, 50, 10, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data")
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "gzip" in message


def test_cut_off_gzip(tmp_path):
    write_idx_dataset(tmp_path, 50, 10, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "gzip" in message


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)


def test_corrupt_pickle(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"\x80\x02garbage"))
    message = _error(path)
    assert str(path) in message and "pickle" in message


@pytest.mark.parametrize("protocol", [2, 5])
def test_pickle_refuses_code(tmp_path, protocol):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(Evil(), protocol=protocol)))
    message = _error(path)
    assert "refusing to load" in message and "builtin" in message and ".print" in message


def test_pickle_wrong_structure(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps((np.zeros(3), np.zeros(3)))))
    assert "(train, valid, test)" in _error(path)


def test_pickle_wrong_dimensions(tmp_path):
    parts = tuple((np.zeros((5, 100), np.float32), np.zeros(5, np.int64)) for _ in range(3))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(parts)))
    message = _error(path)
    assert str(path) in message and "(5, 100)" in message


def test_val_size_too_large(tmp_path):
    write_idx_dataset(tmp_path, 50, 10)
    assert "validation size 50" in _error(tmp_path, val_size=50)
    assert "validation size -1" in _error(tmp_path, val_size=-1)


@pytest.mark.parametrize("num_train, val", [(60000, 10000), (120000, 10000), (600, 100),
                                            (3000, 500), (5, 0)])
def test_default_validation_split_scales_with_the_training_set(num_train, val):
    # MNIST's 60000 keep the classic 10000; smaller sets hold out a sixth, so that a data
    # set under 10000 images still trains.
    assert mnist.default_val_size(num_train) == val


def test_a_small_data_set_loads_with_the_default_split(tmp_path):
    write_idx_dataset(tmp_path, num_train=1200, num_test=30)
    data = load_dataset(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (1000, 200, 30)


def test_val_size_0_trains_on_every_image(tmp_path):
    write_idx_dataset(tmp_path, num_train=300, num_test=30)
    data = load_dataset(tmp_path, val_size=0)
    assert (len(data.train), len(data.val)) == (300, 0)
    assert data.val.images.shape == (0, 784) and data.val.one_hot.shape == (0, 10)


@pytest.mark.parametrize("gz", [False, True])
def test_a_single_idx_file_says_what_data_takes(tmp_path, gz):
    write_idx_dataset(tmp_path, num_train=20, num_test=10, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    message = _error(path)
    assert message.startswith(f"{path}: a single IDX file")
    assert "folder holding the four MNIST IDX files" in message and "corrupt" not in message


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n", b"hello, world\n", b""])
def test_a_file_that_is_not_a_pickle_says_what_data_takes(tmp_path, content):
    path = tmp_path / "digits.png"
    path.write_bytes(content)
    message = _error(path)
    assert message.startswith(f"{path}: not a pickle nor an IDX file; expected a folder")
    assert "mnist.pkl.gz" in message


def test_a_gzipped_pickle_without_gz_in_its_name(tmp_path):
    gzipped = write_pickle_dataset(tmp_path / "mnist.pkl.gz")
    path = gzipped.rename(tmp_path / "mnist.pkl")
    assert "does not end in .gz" in _error(path)


@pytest.mark.parametrize("source, name", [
    ("/usr/share/datasets/fashion-mnist", "Fashion-MNIST"),
    ("/usr/share/datasets/fashion-mnist/", "Fashion-MNIST"),
    ("/home/me/mnist", "mnist"),
    ("data/mnist.pkl.gz", "mnist.pkl.gz"),
])
def test_dataset_name_for_titles(source, name):
    assert mnist.dataset_name(source) == name


def _write_bomb(path, header: bytes, zeros: int) -> None:
    """A gzip file of ``header`` then ``zeros`` zero bytes, streamed: never all in memory."""
    chunk = bytes(1 << 20)
    with gzip.GzipFile(path, "wb", compresslevel=9) as f:
        f.write(header)
        for _ in range(zeros // len(chunk)):
            f.write(chunk)


def _growth_kib(call: str) -> tuple[str, int]:
    """What ``call`` (of a dlsys.data.mnist function) said, and what it cost in memory."""
    return refusal_and_growth("from dlsys.data import mnist", f"mnist.{call}")


def test_gzip_bomb_is_refused_within_a_memory_bound(tmp_path):
    # The header promises ten 28x28 images (7840 bytes); 800 MB of zeros follow (815 KB of
    # gzip). The loader must stop after what the header allows, not inflate it all.
    images, _ = synthetic_images(10, 0)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _write_bomb(path, idx_bytes(images), 800 << 20)
    assert path.stat().st_size < 1 << 20
    output, grown_kib = _growth_kib(f"read_idx({str(path)!r})")
    assert "refused:" in output and "trailing bytes" in output
    assert grown_kib < 64 * 1024, f"reading the bomb took {grown_kib} KiB more memory"


@pytest.mark.parametrize("opening, closing", [(b"]q\x00(", b"e."), (b"(", b"t.")])
def test_a_pickle_of_small_ints_is_refused_at_once(tmp_path, opening, closing):
    # 64 MiB of BININT1 opcodes (a list, or a tuple, of 32 Mi zeros) in 63 KB of gzip:
    # unpickled, 32 Mi Python objects (over 256 MB) before any check could look at them.
    path = tmp_path / "mnist.pkl.gz"
    ints = b"K\x00" * (1 << 19)
    with gzip.GzipFile(path, "wb", compresslevel=9) as f:
        f.write(b"\x80\x02" + opening)
        for _ in range(64):
            f.write(ints)
        f.write(closing)
    started = time.perf_counter()
    output, grown_kib = _growth_kib(f"load_pickle({str(path)!r})")
    assert "refused:" in output and str(path) in output
    assert "EMPTY_LIST" in output or f"more than {array_pickle.MAX_OPCODES}" in output
    assert grown_kib < 16 * 1024, f"reading the bomb took {grown_kib} KiB more memory"
    assert time.perf_counter() - started < 30


def test_an_array_larger_than_the_bound_is_refused_before_its_data_is_read(
        tmp_path, monkeypatch):
    path = write_pickle_dataset(tmp_path / "mnist.pkl.gz", sizes=(120, 30, 40), protocol=3)
    # The train images (120 x 784 float32, 376320 bytes) fit; the valid ones do not.
    monkeypatch.setattr(mnist, "MAX_PICKLE_BYTES", 400000)
    message = _error(path)
    assert message.startswith(f"{path}: valid images: shape (30, 784) of float32 declares "
                              f"94080 bytes, more than the 22720 left")


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null"])
def test_a_device_is_not_a_data_set(special):
    message = _error(special)
    assert special in message and "no such file" not in message
    assert "not a directory of IDX files nor a regular pickle file" in message


def test_a_folder_without_the_idx_files_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not MNIST")
    message = _error(tmp_path)
    assert f"{tmp_path}: not an MNIST data folder" in message
    assert "train-images-idx3-ubyte" in message


@pytest.mark.parametrize("kind", ["fifo", "directory", "device link"])
def test_an_idx_name_that_is_not_a_regular_file(tmp_path, kind):
    write_idx_dataset(tmp_path, 50, 10)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block without a writer
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    message = _error(tmp_path, val_size=10)
    assert str(path) in message and "not a regular file" in message


@pytest.mark.parametrize("images, words", [
    (np.full((5, 784), "a"), "must be real numbers, got dtype <U1"),
    (np.zeros((5, 784), np.complex64), "must be real numbers, got dtype <c8"),
    (np.full((5, 784), None, dtype=object), "must be real numbers, got dtype |O8"),
    (np.ones((5, 784), bool), "must be real numbers, got bool"),
    (np.where(np.eye(5, 784) > 0, np.nan, 0.5).astype(np.float32), "NaN or infinite"),
    (np.full((5, 784), 255, np.uint8), "must lie in [0, 1], found 255..255"),
])
def test_pickle_pixels_that_are_not_the_format(tmp_path, images, words):
    parts = tuple((images, np.zeros(5, np.int64)) for _ in range(3))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(parts)))
    message = _error(path)
    assert str(path) in message and "train" in message and words in message
