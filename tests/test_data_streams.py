"""charlm.data.streams: a split cut into contiguous streams read as BPTT windows (training), or
covered once with a burn-in (evaluation); the splits' bounds, and the errors when a split is too
small for its streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charlm.data.cache import prepare_corpus
from charlm.data.datamodule import CharDataModule
from charlm.data.streams import IGNORE_INDEX, BPTTLoader, split_bounds
from charlm.errors import CharLMError
from conftest import assert_user_error, train_tiny


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


def test_corpus_shorter_than_one_batch_names_length_minimum_and_options(tmp_path, shakespeare_path, run_app):
    text = shakespeare_path.read_text(encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text(text[:200], encoding="utf-8")  # train split 180 < 8 x (32 + 1) = 264
    r = run_app("train", "data=file", f"data.path={short}", "data.batch_size=8", "data.seq_len=32",
                f"hydra.run.dir={tmp_path / 'r0'}", "logger=csv")
    assert_user_error(r, "the train split has 180 characters", "264", "data.batch_size", "data.seq_len")

    # an enabled val split too small for its streams: an error before the first training step
    corpus = tmp_path / "c.txt"
    corpus.write_text(text[:3000], encoding="utf-8")
    out = tmp_path / "r1"
    with pytest.raises(CharLMError, match=r"the val split has 15 characters.*17.*data.eval_batch_size"):
        train_tiny(out, "data=file", f"data.path={corpus}", "data.splits=[0.995,0.005,0.0]", "data.eval_batch_size=16")
    assert not (out / "checkpoints").exists()  # nothing was trained

    # a split fraction that rounds to zero characters is an error, not a silent skip
    with pytest.raises(CharLMError, match=r"the val split is 0.0001 of a 3,000-character corpus, which leaves 0"):
        train_tiny(tmp_path / "r2", "data=file", f"data.path={corpus}", "data.splits=[0.9999,0.0001,0.0]")


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
