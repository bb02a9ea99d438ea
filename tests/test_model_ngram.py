"""charlm.model.ngram: the Kneser-Ney character n-gram baseline."""

from __future__ import annotations

import math

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
