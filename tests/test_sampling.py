"""Sampling: temperature, top-k, prime handling, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from charlm.data.vocab import Vocab
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.sampling.sampler import default_prime, next_ids, sample

VOCAB = Vocab("\nabcdefghij ")


@pytest.fixture
def net():
    torch.manual_seed(0)
    return CharRNN(len(VOCAB), hidden_size=16, num_layers=2)


def test_length_counts_new_characters(net):
    out = sample(net, VOCAB, prime="abcdefghij", length=3, seed=0)
    assert len(out) == 1 and out[0].startswith("abcdefghij") and len(out[0]) == 13


def test_same_seed_same_text_and_batched_samples(net):
    a = sample(net, VOCAB, prime="ab", length=50, seed=7, num_samples=4)
    b = sample(net, VOCAB, prime="ab", length=50, seed=7, num_samples=4)
    assert a == b and len(a) == 4 and len(set(a)) > 1


def test_greedy_and_tiny_temperature(net):
    g = sample(net, VOCAB, prime="abc", length=40, temperature=0, seed=1)
    g2 = sample(net, VOCAB, prime="abc", length=40, temperature=0, seed=2)
    assert g == g2  # greedy ignores the seed
    tiny = sample(net, VOCAB, prime="abc", length=40, temperature=1e-3, seed=3)
    assert tiny == g  # a tiny temperature is greedy in the limit, without NaN or overflow
    logits = torch.tensor([[1000.0, -1000.0, 0.0]])
    assert next_ids(logits, 1e-6, None, None).item() == 0


def test_top_k_restricts_choices():
    logits = torch.tensor([[5.0, 4.0, 3.0, -1.0, -2.0]]).expand(2000, -1)
    g = torch.Generator().manual_seed(0)
    picks = next_ids(logits, 5.0, 2, g)
    assert set(picks.flatten().tolist()) == {0, 1}


@pytest.mark.parametrize("t", [-0.5, math.nan, math.inf, "hot"])
def test_bad_temperature_is_an_error(net, t):
    with pytest.raises(CharLMError, match="temperature"):
        sample(net, VOCAB, prime="a", length=5, temperature=t)


def test_unknown_prime_characters_are_listed(net):
    with pytest.raises(CharLMError) as e:
        sample(net, VOCAB, prime="abXYZ", length=5)
    assert "'X'" in str(e.value) and "'Z'" in str(e.value) and "drop_unknown" in str(e.value)
    out = sample(net, VOCAB, prime="abXYZ", length=5, drop_unknown=True, seed=0)
    assert out[0].startswith("ab") and len(out[0]) == 7


def test_default_prime_is_in_vocabulary():
    assert default_prime(VOCAB) == "\n"
    no_newline = Vocab("abc")
    assert default_prime(no_newline) == "a"


@pytest.mark.parametrize("kwargs,message", [
    ({"top_k": 2.5}, "top_k=2.5 must be an integer >= 1 (or null: all characters)"),
    ({"top_k": "abc"}, "top_k=abc must be an integer >= 1"),
    ({"top_k": 0}, "top_k=0 must be an integer >= 1"),
    ({"length": 2.7}, "length=2.7 must be an integer >= 0"),
    ({"length": -1}, "length=-1 must be an integer >= 0"),
    ({"num_samples": True}, "num_samples=true must be an integer >= 1"),
])
def test_counts_are_integers_in_range(net, kwargs, message):
    # top_k=2.5 ended in a TypeError from torch.topk; length=2.7 silently gave 2 characters
    args = {"length": 5, **kwargs}
    with pytest.raises(CharLMError) as e:
        sample(net, VOCAB, prime="a", **args)
    assert str(e.value) == message or str(e.value).startswith(message)


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_keeps_exactly_k_on_a_tie(k):
    # three characters tied for the highest logit: top_k=1 keeps one of them, top_k=2 two
    logits = torch.tensor([[2.0, 7.0, 7.0, 7.0, 1.0]]).expand(3000, -1)
    g = torch.Generator().manual_seed(0)
    picks = set(next_ids(logits, 1.0, k, g).flatten().tolist())
    assert len(picks) == k and picks <= {1, 2, 3}, picks


def test_top_k_one_with_a_tie_samples_one_character(net):
    # through sample() (the fast step's logits): a model whose output ties three characters
    with torch.no_grad():
        net.decoder.weight.zero_()
        net.decoder.bias.fill_(-5.0)
        net.decoder.bias[[1, 4, 7]] = 3.0
    texts = sample(net, VOCAB, prime="ab", length=60, top_k=1, temperature=1.0, num_samples=8, seed=3)
    chars = {c for t in texts for c in t[2:]}
    assert len(chars) == 1 and chars <= {VOCAB.chars[i] for i in (1, 4, 7)}, chars
