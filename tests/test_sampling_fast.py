"""The fast sampling step gives the logits and state of nn.LSTM / GRU / RNN, and sample() uses it."""

from __future__ import annotations

import pytest
import torch

from charlm.data.vocab import Vocab
from charlm.model.rnn import CharRNN
from charlm.sampling import sample
from charlm.sampling.fast import FastStep
from charlm.sampling.sampler import next_ids


def _reference_and_fast(net: CharRNN, n: int, steps: int, dtype=None):
    """Run the same random ids through ``net`` (one char per call) and ``FastStep``."""
    net.eval()
    fast = FastStep(net, dtype)
    g = torch.Generator().manual_seed(1)
    st_ref = net.init_state(n)
    st_fast = fast.init_state(n)
    worst_logit = worst_state = 0.0
    for _ in range(steps):
        ids = torch.randint(0, net.vocab_size, (n, 1), generator=g)
        with torch.no_grad():
            ref, st_ref = net(ids, st_ref)
        got, st_fast = fast.step(ids, st_fast)
        assert got.shape == (n, net.vocab_size) and got.dtype == torch.float32
        worst_logit = max(worst_logit, (ref[:, 0] - got).abs().max().item())
        worst_state = max(worst_state, max((a - b).abs().max().item() for a, b in zip(st_ref, st_fast)))
    return worst_logit, worst_state


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_fast_step_matches_torch_rnn(cell, num_layers):
    torch.manual_seed(0)
    net = CharRNN(vocab_size=67, hidden_size=48, num_layers=num_layers, cell=cell, embedding_dim=24, dropout=0.3)
    logit_err, state_err = _reference_and_fast(net, n=5, steps=30)
    assert logit_err < 1e-5, logit_err
    assert state_err < 1e-5, state_err


def test_fast_step_charrnn_init_and_tied_weights():
    torch.manual_seed(0)
    net = CharRNN(vocab_size=40, hidden_size=32, num_layers=2, init="charrnn", tie_weights=True)
    logit_err, state_err = _reference_and_fast(net, n=2, steps=20)
    assert logit_err < 1e-5 and state_err < 1e-5


def test_fast_step_bf16_weights_close_and_half_the_bytes():
    torch.manual_seed(0)
    net = CharRNN(vocab_size=65, hidden_size=64, num_layers=2)
    fp32 = FastStep(net)
    bf16 = FastStep(net, torch.bfloat16)
    assert bf16.weight_bytes_per_char() * 2 == fp32.weight_bytes_per_char()
    logit_err, _ = _reference_and_fast(net, n=3, steps=20, dtype=torch.bfloat16)
    assert logit_err < 0.05, logit_err  # bf16 has 8 mantissa bits: close, not equal


def test_fast_step_does_not_change_when_net_changes_later():
    net = CharRNN(vocab_size=10, hidden_size=8, num_layers=1).eval()
    fast = FastStep(net)
    ids = torch.tensor([1, 2])
    before, _ = fast.step(ids, fast.init_state(2))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    after, _ = fast.step(ids, fast.init_state(2))
    assert torch.equal(before, after)


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
