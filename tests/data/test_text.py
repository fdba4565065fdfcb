"""The text corpus of the character-level GPT: reading (a file, a folder of fortunes), the
vocabulary, the validation tail, random batches, and every fault of a corpus."""

import os

import numpy as np
import pytest

from dlsys.data import text
from dlsys.data.text import (
    Vocabulary,
    corpus_files,
    load_text,
    random_batch,
    read_corpus,
    windows,
)
from dlsys.errors import DataError


def _fortunes(folder):
    """A small fortunes folder as Debian lays it out: text files, their .dat indexes, .u8
    symlinks to the same files."""
    folder.mkdir()
    (folder / "alpha").write_text("First fortune.\n%\nSecond,\n  two lines.\n%\n")
    (folder / "alpha.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    os.symlink("alpha", folder / "alpha.u8")
    (folder / "beta").write_text("Third: 100%\n%\n")
    return folder


def test_a_file_is_read_as_it_is_and_encoded_by_its_sorted_characters(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello, world\n" * 30)
    data = load_text(path, context=8, val_size=20)
    assert data.vocab.chars == "\n ,dehlorw"
    assert data.train.dtype == np.int64 and len(data.train) + len(data.val) == 390
    assert data.vocab.decode(np.concatenate([data.train, data.val])) == "hello, world\n" * 30
    assert data.vocab.decode(data.val) == ("hello, world\n" * 30)[-20:]
    assert data.source == str(path) and data.name == "corpus.txt"


def test_a_folder_of_fortunes_skips_indexes_and_links_and_blanks_the_separators(tmp_path):
    folder = _fortunes(tmp_path / "fortunes")
    assert [p.name for p in corpus_files(folder)] == ["alpha", "beta"]
    corpus, source = read_corpus(folder)
    assert source == str(folder) and "%" not in corpus.splitlines() and "100%" in corpus
    pieces = sorted(corpus.split("\n\n"))
    assert pieces == ["", "First fortune.", "Second,\n  two lines.", "Third: 100%"]
    assert read_corpus(folder)[0] == corpus  # the order is fixed, not the run's


def test_the_default_tail_is_a_tenth_at_most_the_cap_and_holds_one_window(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 100)
    assert len(load_text(path, context=16).val) == 100
    assert len(load_text(path, context=200).val) == 201  # a tenth is less than one window
    assert len(load_text(path, context=16, val_size=0).val) == 0
    assert text.default_val_size(10 ** 7) == text.DEFAULT_VAL_CAP


def test_random_batches_are_windows_and_their_next_characters_from_the_seed():
    ids = np.arange(1000, dtype=np.int64)
    x, y = random_batch(ids, np.random.default_rng(3), 4, 16)
    again, _ = random_batch(ids, np.random.default_rng(3), 4, 16)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[:, 1:] - x[:, :-1], 1)
    np.testing.assert_array_equal(x, again)


def test_validation_windows_cover_the_tail_once():
    x, y = windows(np.arange(50, dtype=np.int64), 16)
    assert x.shape == (3, 16)
    np.testing.assert_array_equal(x.reshape(-1), np.arange(48))
    np.testing.assert_array_equal(y.reshape(-1), np.arange(1, 49))


def test_the_vocabulary_names_every_character_it_lacks():
    vocab = Vocabulary.of("abc")
    np.testing.assert_array_equal(vocab.encode("cab"), [2, 0, 1])
    with pytest.raises(DataError, match=r"^the prompt has characters the model's vocabulary "
                                        r"lacks: 'x', 'z' \(the vocabulary holds the 3"):
        vocab.encode("zaxz", "the prompt")


@pytest.mark.parametrize("content, context, message", [
    (b"", 4, "the corpus is empty"),
    (b"abc\n\xff\xfe", 4, r"not UTF-8 text: byte 4 \(line 2\) is 0xff"),
    (b"ab\x00cd" * 4, 4, "not text: a NUL byte at byte 2"),
    (b"abcd", 4, r"4 characters, shorter than one context and the character after it "
                 r"\(4 \+ 1\)"),
])
def test_a_bad_corpus_is_a_named_error(tmp_path, content, context, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        load_text(path, context)


def test_missing_files_and_impossible_tails_are_named_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=f"^{tmp_path / 'none.txt'}: no such file or folder$"):
        load_text(tmp_path / "none.txt", 8)
    path = tmp_path / "corpus.txt"
    path.write_text("x" * 30)
    with pytest.raises(DataError, match=r"validation size 5 must be 0 or in 9..21"):
        load_text(path, 8, val_size=5)
    with pytest.raises(DataError, match="no text files in the folder"):
        (tmp_path / "empty").mkdir()
        read_corpus(tmp_path / "empty")
    monkeypatch.setattr(text, "DEFAULT_TEXT_DIR", tmp_path / "no-fortunes")
    with pytest.raises(DataError, match="no such folder; install Debian's fortunes package"):
        read_corpus(None)


@pytest.mark.skipif(not text.DEFAULT_TEXT_DIR.is_dir(), reason="Debian's fortunes package "
                    "is not installed (make data installs it)")
def test_debians_fortunes_load():
    data = load_text(None, 128)
    assert len(data.train) > 10 ** 6 and len(data.val) == text.DEFAULT_VAL_CAP
    assert data.name == "fortunes" and "%" not in \
        data.vocab.decode(data.train[:10000]).splitlines()
