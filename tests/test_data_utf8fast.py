"""charlm.data.utf8fast: the byte-level UTF-8 fast path of corpus preparation gives exactly what the reference
decoder (``iter_decoded``: strict str decode, UTF-32 code points) gives: same ids, vocabulary,
character count, newline count, BOM flag and error message (with its byte offset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from charlm.data.cache import prepare_corpus
from charlm.data.corpus import iter_decoded
from charlm.data.vocab import Vocab
from charlm.errors import CharLMError


def reference(path: Path, newline: str = "normalize", chunk_bytes: int = 1 << 20):
    """(ids, vocab, stats) by the reference decoder."""
    stats: dict = {}
    text = "".join(iter_decoded(path, "utf-8", newline, stats, chunk_bytes))
    vocab = Vocab(set(text))
    ids = vocab.lookup_table()[np.frombuffer(text.encode("utf-32-le"), "<u4")]
    return ids, vocab, stats


def assert_same(path: Path, cache: Path, newline: str = "normalize", chunk_bytes: int = 1 << 20):
    ids, vocab, stats = reference(path, newline)
    c = prepare_corpus(path, newline=newline, cache_dir=cache, chunk_bytes=chunk_bytes)
    assert c.vocab.chars == vocab.chars
    assert c.ids.dtype == ids.dtype == vocab.dtype
    np.testing.assert_array_equal(np.asarray(c.ids), ids)
    assert c.newline_replacements == stats["newline_replacements"]
    assert c.bom_removed == stats["bom_removed"]
    return c


@pytest.mark.parametrize("rel", ["tinyshakespeare/input.txt", "warpeace/input.txt", "names/names.txt"])
@pytest.mark.parametrize("newline", ["normalize", "keep"])
def test_shared_corpora_match_reference(shared_data, tmp_path, rel, newline):
    c = assert_same(shared_data / rel, tmp_path, newline, chunk_bytes=1 << 16)
    if rel.startswith("warpeace"):
        assert c.bom_removed and (c.newline_replacements == 62_016) == (newline == "normalize")


MIXED = "a\r\nb\rc\n\r\r\n é—“x”😀\r日本\r\n\u00ff\u0100\U0010fffd\r"


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 4, 5, 7, 13, 64])
@pytest.mark.parametrize("bom", [False, True])
def test_mixed_text_any_chunk_boundary(tmp_path, chunk_bytes, bom):
    # chunk ends fall inside 2-, 3- and 4-byte sequences, inside the BOM and between \r and \n
    f = tmp_path / "mixed.txt"
    f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (MIXED * 7).encode("utf-8"))
    for newline in ("normalize", "keep"):
        c = assert_same(f, tmp_path / f"c-{newline}", newline, chunk_bytes)
        assert c.bom_removed == bom
    assert c.vocab.decode(c.ids[:4]) == "a\r\nb"  # keep


def test_uint16_vocabulary(tmp_path):
    text = "".join(chr(0x4E00 + i) + ("\n" if i % 40 == 0 else "") for i in range(600)) * 3
    f = tmp_path / "cjk.txt"
    f.write_text("x" + text, encoding="utf-8")
    c = assert_same(f, tmp_path, chunk_bytes=101)
    assert c.ids.dtype == np.uint16 and len(c.vocab) == 602


INVALID = [
    b"abc\x80def",  # stray continuation byte
    b"abc\xc3(def",  # lead without continuation
    b"abc\xc0\xafdef",  # overlong
    b"abc\xed\xa0\x80def",  # surrogate
    b"abc\xf4\x90\x80\x80def",  # above U+10FFFF
    b"abc\xffdef",
    b"abc\xe6\x97",  # truncated at end of file
    b"\xef\xbb",  # half a BOM
    "caf\u00e9 au lait ".encode("latin-1") * 3,
]


@pytest.mark.parametrize("raw", INVALID)
@pytest.mark.parametrize("chunk_bytes", [2, 3, 5, 1 << 20])
def test_invalid_utf8_same_error_and_offset(tmp_path, raw, chunk_bytes):
    f = tmp_path / "bad.txt"
    f.write_bytes("ok é\r\n".encode("utf-8") * 3 + raw + b"tail")
    with pytest.raises(CharLMError) as ref:
        reference(f)
    with pytest.raises(CharLMError) as fast:
        prepare_corpus(f, cache_dir=tmp_path, chunk_bytes=chunk_bytes)
    assert str(fast.value) == str(ref.value) and "byte offset" in str(fast.value)
