"""charlm.data.corpus: a corpus file decoded to text (strict, in the encoding given, line endings
normalised) and its vocabulary, and the named corpora found or downloaded. The ids cache and a
checkpoint's training corpus reopened: test_data_cache.py."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.checkpoint import load_checkpoint
from charlm.data.cache import prepare_corpus
from charlm.data.corpus import CorpusSettingError, resolve_corpus_path
from charlm.data.datamodule import CharDataModule
from charlm.errors import CharLMError
from conftest import assert_user_error, last_ckpt, train_tiny


# ============================================================================= decoding and the vocabulary
def test_shakespeare_vocab_and_ids_roundtrip(shakespeare_path, tmp_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    c = prepare_corpus(shakespeare_path, cache_dir=tmp_path)
    assert len(c.vocab) == 65
    assert c.vocab.chars == sorted(set(text))
    assert c.ids.dtype == np.uint8
    assert c.num_chars == len(text) == 1_115_394
    assert c.vocab.decode(c.ids[:500]) == text[:500]
    assert c.vocab.decode(c.ids[-300:]) == text[-300:]
    assert isinstance(c.ids, np.memmap)


#: A process's digest of a prepared corpus: its vocabulary and every id.
_IDS_DIGEST = """
import hashlib, sys
from charlm.data.cache import prepare_corpus
for path in sys.argv[1:]:
    c = prepare_corpus(path)
    print(hashlib.sha256("".join(c.vocab.chars).encode() + c.ids.tobytes()).hexdigest())
"""


def test_vocab_and_ids_identical_across_processes(shared_data, tmp_path, run_python):
    """Different hash seeds and thread counts stand in for "another machine" (both CPU): each
    process prepares Tiny Shakespeare and War and Peace (a BOM, lone CRs, non-ASCII) from scratch."""
    corpora = [str(shared_data / "tinyshakespeare" / "input.txt"), str(shared_data / "warpeace" / "input.txt")]
    outs = set()
    for i, (seed, threads) in enumerate([("0", "1"), ("1", "1"), ("12345", "2")]):
        p = run_python("-c", _IDS_DIGEST, *corpora, timeout=300,
                       env={"PYTHONHASHSEED": seed, "OMP_NUM_THREADS": threads, "CHARLM_CACHE_DIR": str(tmp_path / f"cache{i}")})
        assert p.returncode == 0, p.stderr
        assert len(p.stdout.split()) == 2
        outs.add(p.stdout)
    assert len(outs) == 1


def test_multibyte_corpus(tmp_path):
    text = "Привет, мир! Γειά σου κόσμε. 你好，世界。 😀 e\u0301\n" * 20
    f = tmp_path / "multi.txt"
    f.write_text(text, encoding="utf-8")
    c = prepare_corpus(f, cache_dir=tmp_path, chunk_bytes=5)  # chunks split multi-byte characters
    assert c.vocab.chars == sorted(set(text))
    assert c.vocab.decode(c.ids) == text
    assert int(c.ids.max()) < len(c.vocab)


def test_empty_input_file_is_an_error_not_an_empty_vocabulary(tmp_path, run_app):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CharLMError, match="input is empty"):
        prepare_corpus(empty, cache_dir=tmp_path)
    r = run_app("train", "data=file", f"data.path={empty}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv")
    assert_user_error(r, "input is empty", str(empty))
    bom_only = tmp_path / "bom.txt"
    bom_only.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(CharLMError, match="input is empty.*only a byte-order mark"):
        prepare_corpus(bom_only, cache_dir=tmp_path)


def test_invalid_utf8_reports_byte_offset_and_option(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\u00e9 au lait ".encode("latin-1") * 3)
    with pytest.raises(CorpusSettingError) as e:
        prepare_corpus(f, cache_dir=tmp_path, chunk_bytes=2)
    assert "byte offset 3" in str(e.value) and e.value.setting == "encoding"
    # the app names its option: charlm-train's data.encoding, charlm-eval's encoding
    assert "Set data.encoding=<the file's encoding> (for example data.encoding=latin-1" in str(e.value.worded("data.encoding"))
    c = prepare_corpus(f, encoding="latin-1", cache_dir=tmp_path)
    assert "\u00e9" in c.vocab and c.encoding == "iso8859-1"


@pytest.mark.slow
def test_wrong_encoding_is_an_error_with_byte_offset_and_the_right_one_travels_with_the_checkpoint(tmp_path, shakespeare_path, run_app):
    base = shakespeare_path.read_text(encoding="utf-8")[:20_000]
    text = base + "\nCafé, naïve señor, à bientôt.\n" + base[:5_000]
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(text.encode("latin-1"))
    offset = len(base) + len("\nCaf")  # ASCII before it: characters == bytes
    r = run_app("train", "data=file", f"data.path={latin}", f"hydra.run.dir={tmp_path / 'x'}", "logger=csv")
    assert_user_error(r, f"byte offset {offset}", "byte 0xe9", "data.encoding")
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes(("ab\n" * 1000 + "你好，世界\n").encode("gbk"))
    with pytest.raises(CharLMError, match=r"byte offset 3000 .*Set encoding="):
        prepare_corpus(gbk)
    assert prepare_corpus(gbk, encoding="gbk").vocab.chars[-1] == "，"

    out = tmp_path / "run"
    train_tiny(out, "data=file", f"data.path={latin}", "data.encoding=latin-1", "data.splits=[0.7,0.3,0.0]")
    entry = load_checkpoint(last_ckpt(out))["charlm"]
    assert entry["data"]["encoding"] == "iso8859-1" and "é" in entry["vocab"]
    # charlm-eval reads the training corpus (and any other file) with the checkpoint's encoding
    r = run_app("eval", f"ckpt={last_ckpt(out)}", "split=val", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 0 and "bpc" in r.stdout, r.stderr
    other = tmp_path / "other.txt"
    other.write_bytes("Señor, à bientôt.\n".encode("latin-1"))
    r = run_app("eval", f"ckpt={last_ckpt(out)}", f"file={other}", f"hydra.run.dir={tmp_path / 'e2'}")
    assert r.returncode == 0 and "nats/char" in r.stdout, r.stderr
    # sampling prints the model's characters as UTF-8
    r = run_app("sample", f"ckpt={last_ckpt(out)}", "prime=Café", "length=5", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 0 and r.stdout.startswith("Café")


# ============================================================================= line endings
def test_warpeace_bom_and_lone_cr_are_normalised(shared_data, tmp_path):
    path = shared_data / "warpeace" / "input.txt"
    c = prepare_corpus(path, cache_dir=tmp_path)
    assert c.bom_removed
    assert c.newline_replacements == 62_016
    assert "\r" not in c.vocab and "\ufeff" not in c.vocab and "\n" in c.vocab
    assert c.num_chars == 3_196_214  # the README's count after normalisation
    kept = prepare_corpus(path, newline="keep", cache_dir=tmp_path)
    assert "\r" in kept.vocab and kept.newline_replacements == 0


def test_cr_and_crlf_line_endings_are_normalised_with_a_count_and_can_be_kept(tmp_path, shakespeare_path, caplog):
    lines = shakespeare_path.read_text(encoding="utf-8")[:20_000].split("\n")
    f = tmp_path / "mixed_eol.txt"
    # first half CRLF (Windows), second half lone CR (classic Mac OS)
    half = len(lines) // 2
    f.write_bytes(("\r\n".join(lines[:half]) + "\r\n" + "\r".join(lines[half:])).encode("utf-8"))
    caplog.set_level("INFO", logger="charlm")
    dm = CharDataModule(path=str(f), batch_size=4, seq_len=16)
    c = dm.prepare()
    assert "\r" not in c.vocab and c.newline_replacements == len(lines) - 1
    assert f"{len(lines) - 1:,} line endings normalised to \\n" in caplog.text
    assert c.vocab.decode(c.ids) == "\n".join(lines)
    kept = CharDataModule(path=str(f), newline="keep", batch_size=4, seq_len=16).prepare()
    assert "\r" in kept.vocab and kept.newline_replacements == 0 and kept.num_chars == f.stat().st_size


def test_crlf_and_cr_across_chunk_boundaries(tmp_path):
    f = tmp_path / "mixed.txt"
    raw = ("ab\r\ncd\ref\n" * 1000).encode("utf-8")
    f.write_bytes(raw)
    for chunk in (3, 4, 7, 1 << 20):  # a chunk may end between \r and \n
        c = prepare_corpus(f, cache_dir=tmp_path / f"c{chunk}", chunk_bytes=chunk)
        assert c.vocab.decode(c.ids) == "ab\ncd\nef\n" * 1000
        assert c.newline_replacements == 2000


# ============================================================================= named corpora, a checkpoint's corpus
def test_named_corpus_download_offline_copy(shakespeare_path, tmp_path):
    # The real download code, against the shared copy through a file:// address.
    url = shakespeare_path.resolve().as_uri()
    sha = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    p = resolve_corpus_path("tinyshakespeare", "input.txt", tmp_path, url, sha)
    assert p == tmp_path / "tinyshakespeare" / "input.txt" and p.stat().st_size == 1_115_394
    with pytest.raises(CharLMError, match="sha256"):
        resolve_corpus_path("bad", "input.txt", tmp_path, url, "0" * 64)
    assert not (tmp_path / "bad" / "input.txt").exists()


def test_missing_named_corpus_says_where_to_put_it(tmp_path):
    with pytest.raises(CharLMError) as e:
        resolve_corpus_path("tinyshakespeare", "input.txt", tmp_path, "http://127.0.0.1:9/nothing", None)
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in str(e.value)
    assert "CHARLM_DATA_DIR" in str(e.value)
