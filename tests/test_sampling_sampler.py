"""charlm.sampling.sampler: temperature (0 = greedy), top-k, the prime read once, determinism, and
the fast recurrent step giving the text of the one-nn.LSTM-call-per-character loop."""

from __future__ import annotations

import math

import pytest
import torch

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.data.vocab import Vocab
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.sampling.sampler import default_prime, next_ids, sample
from conftest import assert_user_error, last_ckpt


VOCAB = Vocab("\nabcdefghij ")


@pytest.fixture
def net():
    torch.manual_seed(0)
    return CharRNN(len(VOCAB), hidden_size=16, num_layers=2)


def test_same_seed_same_text_and_batched_samples(net):
    a = sample(net, VOCAB, prime="ab", length=50, seed=7, num_samples=4)
    b = sample(net, VOCAB, prime="ab", length=50, seed=7, num_samples=4)
    assert a == b and len(a) == 4 and len(set(a)) > 1


def test_temperature_zero_is_greedy_tiny_is_finite_and_negative_or_nan_is_an_error(tmp_path, shakespeare_run, run_app):
    net, vocab = model_from_checkpoint(load_checkpoint(last_ckpt(shakespeare_run)))
    greedy = sample(net, vocab, "ROMEO:", 100, temperature=0, seed=1)[0]
    assert greedy == sample(net, vocab, "ROMEO:", 100, temperature=0, seed=2)[0]
    tiny = sample(net, vocab, "ROMEO:", 100, temperature=1e-3, seed=3, num_samples=3)
    assert all(t == greedy for t in tiny)  # 1e-3 is greedy up to ties, with no overflow or NaN
    # extreme logits, in every dtype, at tiny temperatures: valid ids, the arg-max
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        logits = (torch.randn(64, 300, generator=g) * 1e3).to(dtype)
        for t in (1e-3, 1e-30, 1e-45):
            ids = next_ids(logits, t, None, g)
            lf = logits.float()  # a most likely character (bfloat16 rounding makes ties)
            assert torch.equal(lf.gather(1, ids)[:, 0], lf.max(-1).values)
        assert ids.dtype == torch.int64
    for bad in ("-1", "nan"):
        r = run_app("sample", f"ckpt={last_ckpt(shakespeare_run)}", f"temperature={bad}", "length=5", f"hydra.run.dir={tmp_path / 't'}")
        assert_user_error(r, "temperature=", "must be a finite number >= 0")


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
    no_newline = Vocab("abc")  # neither space nor newline: the vocabulary's first character
    assert default_prime(no_newline) == "a"
    text = sample(CharRNN(len(no_newline), hidden_size=8, num_layers=1), no_newline, length=5, seed=0)[0]
    assert text[0] == "a" and len(text) == 1 + 5


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


# ----------------------------------------------------------------------------- the fast step
def _reference_sample(net: CharRNN, vocab: Vocab, prime: str, length: int, temperature: float, seed: int) -> str:
    """The straightforward generator: one nn.LSTM call per character."""
    net.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, state = net(torch.tensor([vocab.encode(prime)]))
        last = logits[:, -1]
        out = []
        for _ in range(length):
            nxt = next_ids(last, temperature, None, g)
            out.append(int(nxt))
            logits, state = net(nxt, state)
            last = logits[:, -1]
    return prime + vocab.decode(out)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sample_uses_fast_step_and_matches_reference(shakespeare_path, cell):
    text = shakespeare_path.read_text(encoding="utf-8")[:5000]
    vocab = Vocab(sorted(set(text)))
    torch.manual_seed(3)
    net = CharRNN(vocab_size=len(vocab), hidden_size=32, num_layers=2, cell=cell)
    for temperature in (0.0, 1.0):
        want = _reference_sample(net, vocab, "ROMEO:", 80, temperature, seed=7)
        net.train()
        got = sample(net, vocab, "ROMEO:", 80, temperature=temperature, seed=7)[0]
        assert got == want
    assert net.training  # sample() restores the mode


def test_sample_many_streams_and_short_lengths(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")[:5000]
    vocab = Vocab(sorted(set(text)))
    net = CharRNN(vocab_size=len(vocab), hidden_size=16, num_layers=1)
    outs = sample(net, vocab, "A", 50, num_samples=64, seed=0)
    assert len(outs) == 64 and all(len(o) == 51 for o in outs)
    assert len(set(outs)) > 1  # independent streams
    assert sample(net, vocab, "A", 0)[0] == "A"
    assert len(sample(net, vocab, "A", 1)[0]) == 2
