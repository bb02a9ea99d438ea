"""sample() uses the model's fast recurrent step (charlm.model.step, checked against nn.LSTM / GRU /
RNN in test_model.py) and gives the text of the one-nn.LSTM-call-per-character loop."""

from __future__ import annotations

import pytest
import torch

from charlm.data.vocab import Vocab
from charlm.model.rnn import CharRNN
from charlm.sampling import sample
from charlm.sampling.sampler import next_ids


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
