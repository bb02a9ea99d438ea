"""Data path: decoding, vocabulary, id cache, splits and BPTT windows, on the real corpora."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from charlm.data.cache import prepare_corpus, training_corpus
from charlm.data.corpus import CorpusSettingError, resolve_corpus_path
from charlm.data.datamodule import CharDataModule
from charlm.data.streams import IGNORE_INDEX, BPTTLoader, split_bounds
from charlm.data.vocab import Vocab, id_dtype
from charlm.errors import CharLMError


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


def test_vocab_identical_across_processes(shakespeare_path, tmp_path):
    code = (
        "import sys; from charlm.data.cache import prepare_corpus;"
        "c = prepare_corpus(sys.argv[1], cache_dir=sys.argv[2]);"
        "print(repr(''.join(c.vocab.chars)), int(c.ids[:100000].astype('int64').sum()))"
    )
    outs = set()
    for i, seed in enumerate(["0", "1", "12345"]):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run(
            [sys.executable, "-c", code, str(shakespeare_path), str(tmp_path / f"cache{i}")],
            env=env, capture_output=True, text=True, check=True,
        )
        outs.add(r.stdout)
    assert len(outs) == 1


def test_id_dtype_is_smallest_that_fits():
    assert id_dtype(65) == np.uint8 and id_dtype(256) == np.uint8
    assert id_dtype(257) == np.uint16 and id_dtype(65536) == np.uint16
    assert id_dtype(65537) == np.uint32
    big = Vocab(chr(0x4E00 + i) for i in range(300))
    assert big.dtype == np.uint16


def test_cache_is_reused_and_invalidated_when_content_changes(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("hello world\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    a = prepare_corpus(f, cache_dir=cache)
    b = prepare_corpus(f, cache_dir=cache)
    assert a.cache_dir == b.cache_dir
    # same size, different content written in place, mtime restored exactly (as `cp -p` does)
    st = f.stat()
    f.write_text("HELLO WORLD\n" * 50, encoding="utf-8")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    c = prepare_corpus(f, cache_dir=cache)
    assert c.cache_dir != a.cache_dir
    assert "H" in c.vocab and "h" not in c.vocab


@pytest.mark.parametrize("tool", ["cp -p", "tar"])
def test_cache_is_not_fooled_by_tools_that_restore_the_mtime(tmp_path, tool):
    """``cp -p`` rewrites the file in place and restores its mtime; ``tar`` (and ``rsync -t``)
    replace it by a new file with the old mtime. Size and mtime match the cached file's: the
    content must still be read again."""
    import shutil

    f = tmp_path / "c.txt"
    f.write_text("hello world\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    a = prepare_corpus(f, cache_dir=cache)
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.txt").write_text("HELLO WORLD\n" * 50, encoding="utf-8")
    st = f.stat()
    os.utime(other / "c.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    if tool == "cp -p":
        assert shutil.which("cp")
        subprocess.run(["cp", "-p", str(other / "c.txt"), str(f)], check=True)
    else:
        assert shutil.which("tar")
        subprocess.run(["tar", "--format=posix", "-cf", str(tmp_path / "c.tar"), "-C", str(other), "c.txt"], check=True)
        subprocess.run(["tar", "-xf", str(tmp_path / "c.tar"), "-C", str(tmp_path)], check=True)
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    c = prepare_corpus(f, cache_dir=cache)
    assert c.cache_dir != a.cache_dir and "H" in c.vocab and "h" not in c.vocab


def test_cache_trusts_the_inode_and_ctime_not_only_size_and_mtime(tmp_path, monkeypatch):
    """With the "racily clean" window switched off, only the stat signature can tell the files
    apart: a file replaced by another one with the same size and mtime (a new inode, as `tar`
    and `rsync -t` leave it) is read again."""
    import charlm.data.cache as cache

    monkeypatch.setattr(cache, "RACY_NS", 0)
    f = tmp_path / "c.txt"
    f.write_text("hello world\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    a = prepare_corpus(f, cache_dir=cache)
    new = tmp_path / "new.txt"
    new.write_text("HELLO WORLD\n" * 50, encoding="utf-8")
    st = f.stat()
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, f)
    c = prepare_corpus(f, cache_dir=cache)
    assert c.cache_dir != a.cache_dir and "H" in c.vocab


def test_unchanged_corpus_starts_from_the_cache_without_reading_the_file(shakespeare_path, tmp_path, monkeypatch):
    import charlm.data.cache as cache

    first = prepare_corpus(shakespeare_path, cache_dir=tmp_path)

    def must_not_read(*args, **kwargs):
        raise AssertionError("the unchanged corpus was read again instead of served from the cache index")

    monkeypatch.setattr(cache, "file_sha256", must_not_read)
    monkeypatch.setattr(cache.utf8fast, "count_pass", must_not_read)
    again = prepare_corpus(shakespeare_path, cache_dir=tmp_path)
    assert again.cache_dir == first.cache_dir and again.num_chars == first.num_chars


def test_warpeace_bom_and_lone_cr_are_normalised(shared_data, tmp_path):
    path = shared_data / "warpeace" / "input.txt"
    c = prepare_corpus(path, cache_dir=tmp_path)
    assert c.bom_removed
    assert c.newline_replacements == 62_016
    assert "\r" not in c.vocab and "\ufeff" not in c.vocab and "\n" in c.vocab
    assert c.num_chars == 3_196_214  # the README's count after normalisation
    kept = prepare_corpus(path, newline="keep", cache_dir=tmp_path)
    assert "\r" in kept.vocab and kept.newline_replacements == 0


def test_crlf_and_cr_across_chunk_boundaries(tmp_path):
    f = tmp_path / "mixed.txt"
    raw = ("ab\r\ncd\ref\n" * 1000).encode("utf-8")
    f.write_bytes(raw)
    for chunk in (3, 4, 7, 1 << 20):  # a chunk may end between \r and \n
        c = prepare_corpus(f, cache_dir=tmp_path / f"c{chunk}", chunk_bytes=chunk)
        assert c.vocab.decode(c.ids) == "ab\ncd\nef\n" * 1000
        assert c.newline_replacements == 2000


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


def test_empty_and_bom_only_files_are_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CharLMError, match="input is empty"):
        prepare_corpus(empty, cache_dir=tmp_path)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(CharLMError, match="input is empty"):
        prepare_corpus(bom, cache_dir=tmp_path)


def test_multibyte_corpus(tmp_path):
    text = "Привет, мир! Γειά σου κόσμε. 你好，世界。 😀 e\u0301\n" * 20
    f = tmp_path / "multi.txt"
    f.write_text(text, encoding="utf-8")
    c = prepare_corpus(f, cache_dir=tmp_path, chunk_bytes=5)  # chunks split multi-byte characters
    assert c.vocab.chars == sorted(set(text))
    assert c.vocab.decode(c.ids) == text
    assert int(c.ids.max()) < len(c.vocab)


def test_training_corpus_of_a_checkpoint(shakespeare_path, tmp_path):
    """charlm-eval and charlm-visualize reopen a checkpoint's training corpus the same way: the
    prepared corpus when its file is here; else one error with the app's own hint; a bad
    setting named by the app's option."""
    hint = "evaluate a file instead: charlm-eval ckpt=... file=<text file>"
    names = {"path": "file", "encoding": "encoding"}
    c = training_corpus({"source": str(shakespeare_path)}, "utf-8", "normalize", tmp_path, names, hint)
    assert c.sha256 == prepare_corpus(shakespeare_path, cache_dir=tmp_path).sha256 and len(c.ids) > 1_000_000
    gone = tmp_path / "gone.txt"
    for data, shown in (({"source": str(gone)}, repr(str(gone))), ({}, "None")):
        with pytest.raises(CharLMError) as e:
            training_corpus(data, "utf-8", "normalize", tmp_path, names, hint)
        assert str(e.value) == f"the checkpoint's training corpus {shown} is not available here; {hint}"
    with pytest.raises(CharLMError) as e:
        training_corpus({"source": str(shakespeare_path)}, "no-such-codec", "normalize", tmp_path, {"encoding": "enc"}, hint)
    assert not isinstance(e.value, CorpusSettingError) and "enc='no-such-codec'" in str(e.value)


def test_split_sizes():
    b = split_bounds(1_115_394, (0.9, 0.1, 0.0))
    assert b[0] == (0, 1_003_855) and b[1] == (1_003_855, 1_115_394) and b[2] == (1_115_394, 1_115_394)
    b = split_bounds(1000, (0.9, 0.05, 0.05))
    assert [e - s for s, e in b] == [900, 50, 50]
    with pytest.raises(CharLMError, match="sum"):
        split_bounds(1000, (0.9, 0.2, 0.0))
    with pytest.raises(CharLMError, match="leaves 0"):
        split_bounds(10, (0.96, 0.04, 0.0))


def test_train_windows_are_contiguous_and_shifted(shakespeare_path, tmp_path):
    c = prepare_corpus(shakespeare_path, cache_dir=tmp_path)
    ids = c.ids[:100_000]
    B, T = 4, 16
    loader = BPTTLoader(ids, B, T)
    L = loader.stream_len
    assert L == (100_000 - 1) // B and len(loader) == L // T
    prev = None
    for i, (x, y) in enumerate(loader):
        assert x.dtype == y.dtype and str(x.dtype) == "torch.int64" and x.shape == (B, T)
        assert (y[:, :-1] == x[:, 1:]).all()  # targets are inputs shifted by one
        for b in range(B):
            start = b * L + i * T
            assert x[b].tolist() == ids[start : start + T].tolist()
        if prev is not None:
            assert (x[:, 0] == prev[:, -1]).all()  # the next window continues each stream
        prev = y
        if i == 5:
            break


def test_ranks_own_disjoint_contiguous_streams(shakespeare_path, tmp_path):
    ids = prepare_corpus(shakespeare_path, cache_dir=tmp_path).ids[:50_000]
    one = BPTTLoader(ids, 8, 32)
    r0 = BPTTLoader(ids, 4, 32, rank=0, world_size=2)
    r1 = BPTTLoader(ids, 4, 32, rank=1, world_size=2)
    x, _ = one.batch(3)
    assert (r0.batch(3)[0] == x[:4]).all() and (r1.batch(3)[0] == x[4:]).all()


def test_eval_loader_predicts_every_character_once():
    ids = (np.arange(1001) % 200).astype(np.uint8)
    loader = BPTTLoader(ids, 7, 10, cover_all=True)
    targets = []
    for x, y in loader:
        targets += y[y != IGNORE_INDEX].tolist()
    assert len(targets) == 1000 and sorted(targets) == sorted(ids[1:].tolist())


def test_split_too_small_for_one_batch(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("to be or not to be\n" * 10, encoding="utf-8")  # 190 characters
    dm = CharDataModule(path=str(f), batch_size=8, seq_len=32, splits=(0.9, 0.1, 0.0), cache_dir=str(tmp_path))
    with pytest.raises(CharLMError) as e:
        dm.loader("train")
    msg = str(e.value)
    assert "171 characters" in msg and "264" in msg and "data.batch_size" in msg and "data.seq_len" in msg


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


def test_a_val_split_too_small_for_its_streams_suggests_what_can_fix_it(shakespeare_path):
    text_ids = np.zeros(15, dtype=np.int64)
    with pytest.raises(CharLMError) as e:  # an evaluated split needs a character per stream, whatever seq_len
        BPTTLoader(text_ids, 16, 32, cover_all=True, name="val")
    assert "data.splits" in str(e.value) and "seq_len" not in str(e.value) and "data.batch_size" not in str(e.value)
    dm = CharDataModule(path=str(shakespeare_path), batch_size=4, seq_len=8, eval_batch_size=200_000, splits=[0.85, 0.15, 0.0])
    dm.prepare()
    with pytest.raises(CharLMError) as e:
        dm.loader("val")
    msg = str(e.value)
    assert "lower data.eval_batch_size" in msg and "data.splits" in msg and "data.seq_len" not in msg


def test_train_loader_state_counts_completed_epochs(compose, tmp_path, shakespeare_path):
    # 6,000 characters as 8 streams x 32: 21 training batches per epoch; 47 steps = 2 epochs + 5
    from charlm.cli.train import train
    from conftest import FAST_TRAIN

    corpus = tmp_path / "tiny.txt"
    corpus.write_text(shakespeare_path.read_text(encoding="utf-8")[:6_000], encoding="utf-8")
    for steps, epoch, consumed in ((42, 2, 0), (47, 2, 5)):
        run = tmp_path / f"run{steps}"
        train(compose("train", run, FAST_TRAIN + [
            f"data.path={corpus}", "data.splits=[0.9,0.1,0.0]", f"trainer.max_steps={steps}",
            "trainer.val_check_interval=50", "callbacks.samples.length=0", "~callbacks.visualize",
        ]))
        ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        (state,) = ck["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        assert (state["epoch"], state["consumed"]) == (epoch, consumed), state
        assert ck["global_step"] == steps


def test_eval_burn_in_reads_the_characters_before_each_stream():
    ids = np.arange(1, 1001, dtype=np.int64) % 250  # no two neighbours alike within a window
    context = np.arange(5000, 5100, dtype=np.int64) % 250 + 0  # 100 characters before the split
    G, K = 8, 64
    loader = BPTTLoader(ids, G, 16, cover_all=True, burn_in=K, context=context)
    x, start = loader.burn_in_batch()
    L = loader.stream_len
    assert x.shape == (G, K) and start.tolist() == [0] * G  # every stream reads 64 characters
    assert x[0].tolist() == context[-K:].tolist()  # the first stream: the text before the split
    for g in range(1, G):
        assert x[g].tolist() == ids[g * L - K : g * L].tolist()
    # nothing before the split: the first stream reads nothing, the second only what precedes it
    alone = BPTTLoader(ids, G, 16, cover_all=True, burn_in=200)
    x, start = alone.burn_in_batch()
    assert x.shape == (G, 200) and L == 125
    assert start.tolist() == [200, 75] + [0] * (G - 2)  # streams 0 and 1 have 0 and 125 characters
    assert x[1, 75:].tolist() == ids[:125].tolist() and x[2].tolist() == ids[50:250].tolist()
    # ranks: rank 1 of 2 reads the burn-in of global streams 4..7
    r1 = BPTTLoader(ids, G // 2, 16, rank=1, world_size=2, cover_all=True, burn_in=K, context=context)
    assert torch.equal(r1.burn_in_batch()[0], loader.burn_in_batch()[0][G // 2 :])
    # none configured, or one stream with nothing before it: no burn-in
    assert BPTTLoader(ids, G, 16, cover_all=True).burn_in_batch() is None
    assert BPTTLoader(ids, 1, 16, cover_all=True, burn_in=K).burn_in_batch() is None
    with pytest.raises(CharLMError, match="evaluation streams only"):
        BPTTLoader(ids, G, 16, burn_in=K)


def test_datamodule_eval_streams_read_the_text_before_their_split(tmp_path, small_corpus):
    dm = CharDataModule(path=str(small_corpus), batch_size=4, seq_len=32, splits=(0.8, 0.1, 0.1),
                        eval_batch_size=3, eval_burn_in=50, cache_dir=str(tmp_path))
    ids = dm.prepare().ids
    (_, _), (vb, ve), (tb, _) = dm.bounds
    val, test = dm.loader("val"), dm.loader("test")
    assert val.burn_in == 50 and dm.loader("train").burn_in == 0
    assert val.burn_in_batch()[0][0].tolist() == ids[vb - 50 : vb].tolist()  # the end of train
    assert test.burn_in_batch()[0][0].tolist() == ids[tb - 50 : tb].tolist()  # the end of val
    with pytest.raises(CharLMError, match="data.eval_burn_in"):
        CharDataModule(path=str(small_corpus), eval_burn_in=-1)
