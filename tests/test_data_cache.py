"""charlm.data.cache: a corpus's ids prepared into a cache that is reused only while the file is
unchanged, with bounded memory; the lines shuffled before the split (data.shuffle_lines); and a
checkpoint's training corpus reopened with the settings it was trained with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from charlm.data.cache import prepare_corpus, shuffle_lines, training_corpus
from charlm.data.corpus import CorpusSettingError
from charlm.data.datamodule import CharDataModule
from charlm.errors import CharLMError
from charlm.sampling.novelty import corpus_lines

# ============================================================================= the id cache
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


def test_corpus_preparation_imports_neither_torch_nor_lightning(run_python):
    code = (
        "import sys; from charlm.data.cache import prepare_corpus;"
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    p = run_python("-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
    import charlm.data

    assert charlm.data.CharDataModule.__name__ == "CharDataModule"  # still reachable, lazily
    with pytest.raises(AttributeError):
        charlm.data.NoSuchThing  # noqa: B018


_PREPARE = """
import resource, sys
from charlm.data.cache import prepare_corpus  # imports torch: a baseline of a few hundred MB
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
c = prepare_corpus(sys.argv[1])
print(c.num_chars, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, c.cache_dir)
"""


_EVALUATE = """
import resource, sys
import numpy as np, torch
from charlm.evaluation.evaluate import evaluate
from charlm.model.rnn import CharRNN
torch.manual_seed(0)
ids = np.load(sys.argv[1], mmap_mode="r")
n = int(sys.argv[2])
net = CharRNN(vocab_size=int(ids[:1_000_000].max()) + 1, hidden_size=4, num_layers=1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
r = evaluate(net, ids[:n], batch_size=1024, seq_len=128)
print(r["chars"], base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_preparing_a_large_corpus_and_evaluating_a_100mb_split_keep_memory_bounded(tmp_path, shakespeare_path, run_python):
    """Peak RSS of real processes, measured above the baseline after imports (torch alone is
    ~400 MB): preparing a 200 MB corpus grows it by less than one copy of the text (a 1 GB corpus
    is prepared the same way, chunk by chunk; not run here, for time); evaluating a 100 MB split
    (100 M uint8 ids, memory mapped) grows it far less than the split as int64 (800 MB)."""
    big = tmp_path / "big.txt"
    block = shakespeare_path.read_bytes()
    with open(big, "wb") as f:
        while f.tell() < 200_000_000:
            f.write(block)
    env = {"CHARLM_CACHE_DIR": str(tmp_path / "cache")}
    p = run_python("-c", _PREPARE, str(big), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    n, base, peak, cache = p.stdout.split()
    n, grew = int(n), int(peak) - int(base)
    # less than one copy of the text: bytes, str and ids of the whole corpus would each be >= 200 MB
    assert n >= 200_000_000 and grew < 200e6, f"preparing grew the peak RSS by {grew / 1e6:.0f} MB"
    big.unlink()
    p = run_python("-c", _EVALUATE, str(Path(cache) / "ids.npy"), "100000000", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    chars, base, peak = map(int, p.stdout.split())
    assert chars == 100_000_000 - 1
    # 100 M ids as int64 would be 800 MB; the growth is the memory-mapped pages read (<= 100 MB,
    # reclaimable page cache) plus one window's activations
    assert peak - base < 250e6, f"evaluating 100 MB grew the peak RSS by {(peak - base) / 1e6:.0f} MB"


# ============================================================================= a checkpoint's corpus, its line order
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


def test_names_are_shuffled_before_the_split_and_every_app_reads_the_same_splits(shared_data, tmp_path):
    """data=names sets data.shuffle_lines: names.txt ends in alphabetical runs, so without it
    val and test are alphabetical and each name is predicted from the one before it. The
    checkpoint's data records the seed, and the apps that read a split (charlm-eval and
    charlm-visualize through training_corpus, novelty=true) get the training run's splits."""
    kw = dict(name="names", filename="names.txt", data_dir=str(shared_data), cache_dir=str(tmp_path))
    plain, shuffled = CharDataModule(**kw), CharDataModule(**kw, shuffle_lines=0)
    val_plain = plain.vocab.decode(plain.split_ids("val")).split("\n")[1:-1]
    val_shuffled = shuffled.vocab.decode(shuffled.split_ids("val")).split("\n")[1:-1]
    def ascending(lines):  # fraction of names followed by a later name in alphabetical order
        return sum(a < b for a, b in zip(lines, lines[1:])) / len(lines)

    assert ascending(val_plain) > 0.99  # measured: 0.999
    assert 0.45 < ascending(val_shuffled) < 0.55  # measured: 0.503, as for a random order
    whole = sorted(plain.vocab.decode(plain.prepare().ids).split("\n"))
    assert sorted(shuffled.vocab.decode(shuffled.prepare().ids).split("\n")) == whole
    data = shuffled.config()
    assert data["shuffle_lines"] == 0
    again = training_corpus(data, data["encoding"], data["newline"], str(tmp_path), {}, "hint")
    assert np.array_equal(again.ids, shuffled.prepare().ids)
    train_lines, _, _ = corpus_lines(data, str(tmp_path))
    assert train_lines == set(shuffled.vocab.decode(shuffled.split_ids("train")).split("\n"))


# ----------------------------------------------------------------------------- shuffle_lines
@pytest.mark.parametrize("text", ["ab\nc\ndef\n\nxyz\n", "ab\nc\ndef\n\nxyz"])
def test_shuffle_lines_permutes_whole_lines_and_keeps_the_length(text):
    def lines(t, final_newline):  # the lines of a text, and the text rebuilt from them
        return t[:-1].split("\n") if final_newline else t.split("\n")

    ids = np.frombuffer(text.encode(), dtype=np.uint8)
    outs = {seed: shuffle_lines(ids, ord("\n"), seed).tobytes().decode() for seed in range(8)}
    final = text.endswith("\n")
    for out in outs.values():
        assert len(out) == len(text)
        assert sorted(lines(out, final)) == sorted(lines(text, final))  # the empty line too
    assert outs[3] == shuffle_lines(ids, ord("\n"), 3).tobytes().decode()  # seeded
    assert len(set(outs.values())) > 1  # and not the identity


def test_shuffle_lines_of_a_text_without_line_breaks_is_an_error_naming_the_option():
    with pytest.raises(CharLMError, match=r"data.shuffle_lines .*no line breaks.*data.shuffle_lines=null"):
        shuffle_lines(np.frombuffer(b"no newline here", dtype=np.uint8), ord("\n"), 0)


def test_shuffle_lines_with_kept_cr_line_endings_says_to_normalise_them(tmp_path):
    f = tmp_path / "mac.txt"
    f.write_bytes(b"emma\rolivia\rava\r")
    with pytest.raises(CharLMError, match=r"data.newline=keep .*\\r.*data.newline=normalize"):
        prepare_corpus(f, newline="keep", cache_dir=tmp_path, shuffle_lines=0)
    shuffled = prepare_corpus(f, cache_dir=tmp_path, shuffle_lines=0)  # normalised: three lines
    assert sorted(shuffled.vocab.decode(shuffled.ids).split("\n")) == ["", "ava", "emma", "olivia"]
