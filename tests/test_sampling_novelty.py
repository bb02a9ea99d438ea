"""charlm.sampling.novelty: the fraction of sampled lines not in the training list (the names report)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from charlm.errors import CharLMError
from charlm.sampling.novelty import corpus_lines, first_lines, novelty
from conftest import FAST_TRAIN


def test_first_lines_and_fractions_by_hand():
    texts = ["\nanna\nbob", "\nzyx\n", "\nqqqqq", "\n\nx"]
    lines, unfinished = first_lines(texts, "\n")
    assert lines == ["anna", "zyx", ""] and unfinished == 1
    assert first_lines(["ma\nrk\nx"], "ma") == (["ma"], 0)  # the prime's last line starts the line
    assert first_lines(["x\nmark\nyy"], "x\nma") == (["mark"], 0)
    r = novelty(lines, train={"anna", "emma"}, corpus={"anna", "zyx"}, unfinished=unfinished)
    assert r["samples"] == 4 and r["lines"] == 3 and r["distinct"] == 3
    assert r["novel"] == 2 and r["novel_fraction"] == pytest.approx(2 / 3)  # zyx and the empty line
    assert r["not_in_corpus"] == 1
    with pytest.raises(CharLMError, match="raise length"):
        novelty([], {"a"}, unfinished=5)


def test_names_report_from_a_trained_checkpoint(compose, tmp_path):
    from charlm.cli.sample import run
    from charlm.cli.train import train

    out = tmp_path / "names"
    train(compose("train", out, FAST_TRAIN + ["data=names", "trainer.max_steps=30", "trainer.val_check_interval=30",
                                              "callbacks.samples.length=0"]))
    ckpt = out / "checkpoints" / "last.ckpt"
    train_lines, whole, source = corpus_lines(torch.load(ckpt, weights_only=True)["charlm"]["data"])
    assert source.endswith("names.txt") and 25_000 < len(train_lines) < len(whole) <= 32_033
    cfg = compose("sample", tmp_path / "s", [f"ckpt={ckpt}", "novelty=true", "num_samples=1000", "length=30",
                                             "seed=7", "device=cpu"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        texts = run(cfg)
    assert len(texts) == 1000
    r = json.loads((tmp_path / "s" / "novelty.json").read_text())
    assert r["samples"] == 1000 and r["lines"] + r["unfinished"] == 1000 and r["lines"] > 500
    lines, _ = first_lines(texts, "\n")
    assert r["novel"] == sum(1 for s in lines if s not in train_lines)  # recomputed from the samples
    assert buf.getvalue().startswith(f"1,000 samples: {r['lines']:,} complete lines")
    assert f"{r['novel']:,} ({100 * r['novel_fraction']:.1f}%) not lines of the train split" in buf.getvalue()
    assert (tmp_path / "s" / "samples.txt").read_text(encoding="utf-8").count("--- sample ") == 1000
