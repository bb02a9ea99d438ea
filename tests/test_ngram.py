"""The character n-gram baseline (charlm.model.ngram) and its command, charlm-ngram."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from charlm.data.cache import prepare_corpus
from charlm.errors import CharLMError
from charlm.model.ngram import KneserNeyLM


def test_bigram_on_abab_matches_the_formula_by_hand():
    # train "abab", vocabulary {a, b, c} (c never seen). By hand (module docstring, smoothing=kn):
    # order 1 uses continuation counts N1+(.a) = 2 (the start, b), N1+(.b) = 1 (a): n1 = n2 = 1,
    # D1 = 1/3, so p1(a) = (2 - 1/3 + 1/3 * 2 * 1/3) / 3 = 17/27, p1(b) = 8/27, p1(c) = 2/27.
    # Order 2 uses raw counts ab: 2, ba: 1 (D2 = 1/3):
    #   p(a | b) = (1 - 1/3 + 1/3 * 1 * 17/27) / 1 = 71/81,  p(b | a) = (2 - 1/3 + 1/3 * 8/27) / 2 = 143/162.
    m = KneserNeyLM(2, 3, smoothing="kn").fit(np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(m.distribution([]), [17 / 27, 8 / 27, 2 / 27])
    np.testing.assert_allclose(m.distribution([0]), [17 / 162, 143 / 162, 2 / 162])
    np.testing.assert_allclose(m.distribution([2]), m.distribution([]))  # unseen context: order 1
    r = m.loss(np.array([1, 0, 1]))  # "bab": the first character is context only
    expected = -(math.log(71 / 81) + math.log(143 / 162)) / 2
    assert r["chars"] == 2 and r["loss"] == pytest.approx(expected, rel=1e-12)
    assert r["bpc"] == pytest.approx(expected / math.log(2), rel=1e-12)


@pytest.fixture(scope="module")
def shakespeare_ids(shared_data, tmp_path_factory):
    c = prepare_corpus(shared_data / "tinyshakespeare" / "input.txt", cache_dir=tmp_path_factory.mktemp("cache"))
    return np.asarray(c.ids[:40_000]), np.asarray(c.ids[40_000:45_000]), c.vocab


@pytest.mark.parametrize("smoothing", ["kn", "mkn"])
def test_distributions_sum_to_one_and_match_the_scores(shakespeare_ids, smoothing):
    train, test, vocab = shakespeare_ids
    m = KneserNeyLM(6, len(vocab), smoothing=smoothing).fit(train)
    contexts = [vocab.encode(t) for t in ("", "ROMEO", "the k", "ing t", "zzzzq", "Q", "\n\n")]
    contexts += [list(test[i : i + 5]) for i in (0, 777, 3000)]
    for ctx in contexts:
        p = m.distribution(ctx)
        assert p.shape == (len(vocab),) and (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
    lp = m.log_probs(test)  # the vectorised scores equal the one-context distributions
    for j in (1, 2, 5, 6, 100, 4000):
        assert lp[j - 1] == pytest.approx(math.log(m.distribution(test[max(0, j - 5) : j])[test[j]]), rel=1e-12)


@pytest.mark.parametrize("smoothing", ["kn", "mkn"])
def test_higher_order_does_not_hurt_on_train(shakespeare_ids, smoothing):
    train, _, vocab = shakespeare_ids
    losses = [KneserNeyLM(n, len(vocab), smoothing=smoothing).fit(train).loss(train)["loss"] for n in range(1, 9)]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.6 * losses[0]


def test_order_longer_than_the_text_and_unseen_characters():
    m = KneserNeyLM(10, 4).fit(np.array([0, 1, 2]))  # orders 4..10 are never seen
    assert m.num_ngrams == [3, 2, 1]
    p = m.distribution([0, 1, 2, 0, 1])
    assert p.sum() == pytest.approx(1.0) and p[3] > 0  # id 3 never occurs in training
    assert np.isfinite(m.log_probs(np.array([3, 3, 0, 1, 2, 3]))).all()


def test_errors():
    with pytest.raises(CharLMError, match="order"):
        KneserNeyLM(0, 5)
    with pytest.raises(CharLMError, match="smoothing"):
        KneserNeyLM(3, 5, smoothing="good-turing")
    with pytest.raises(CharLMError, match="discount"):
        KneserNeyLM(3, 5, discount=1.5)
    with pytest.raises(CharLMError, match="not fitted"):
        KneserNeyLM(3, 5).log_probs(np.array([0, 1]))
    with pytest.raises(CharLMError, match=r"\[0, 5\)"):
        KneserNeyLM(3, 5).fit(np.array([0, 7]))
    with pytest.raises(CharLMError, match="at least 2"):
        KneserNeyLM(3, 5).fit(np.array([0, 1])).log_probs(np.array([1]))


def test_charlm_ngram_command(tmp_path, small_corpus):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(
        [sys.executable, "-m", "charlm.cli.ngram", "data=file", f"data.path={small_corpus}", "order=5",
         "crlf=true", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["order"] == 5 and m["smoothing"] == "mkn" and m["train_chars"] == 54_000
    for split in ("val", "test"):
        assert 1.0 < m[split]["loss"] < 4.0 and m[split]["chars"] == 2_999
        assert f"[{split}]: loss {m[split]['loss']:.4f} nats/char | bpc {m[split]['bpc']:.4f}" in r.stdout
        assert m[split]["crlf"]["loss"] < m[split]["loss"] and m[split]["crlf"]["chars"] > 2_999
    bad = subprocess.run([sys.executable, "-m", "charlm.cli.ngram", "data=file", f"data.path={small_corpus}",
                          "order=0", f"hydra.run.dir={tmp_path / 'bad'}"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: order=0")


@pytest.mark.parametrize("arg,message", [
    ("order=2.5", "error: order=2.5 must be an integer >= 1"),
    ("discount=3", "error: discount=3 must be a finite number > 0 and <= 1"),
    ("smoothing=wb", "error: smoothing=wb must be one of mkn, kn"),
])
def test_charlm_ngram_options_are_checked(tmp_path, small_corpus, arg, message):
    r = subprocess.run([sys.executable, "-m", "charlm.cli.ngram", "data=file", f"data.path={small_corpus}", arg,
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr[-2000:]


def test_charlm_ngram_help_lists_its_own_options():
    r = subprocess.run([sys.executable, "-m", "charlm.cli.ngram", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "charlm-ngram:" in r.stdout and "order: 20" in r.stdout
    assert "== Config groups" not in r.stdout and "optimizer" not in r.stdout
