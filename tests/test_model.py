"""The network: shapes, carried state, dropout, init."""

from __future__ import annotations

import pytest
import torch

from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_shapes_and_state(cell):
    torch.manual_seed(0)
    net = CharRNN(65, hidden_size=32, num_layers=2, cell=cell, embedding_dim=16)
    ids = torch.randint(0, 65, (3, 11))
    logits, state = net(ids)
    assert logits.shape == (3, 11, 65) and logits.dtype == torch.float32
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (2, 3, 32) for s in state)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_two_windows_with_carried_state_equal_one_long_window(cell):
    torch.manual_seed(0)
    net = CharRNN(50, hidden_size=24, num_layers=2, cell=cell).eval()
    ids = torch.randint(0, 50, (4, 40))
    full, s_full = net(ids)
    a, s = net(ids[:, :20])
    b, s2 = net(ids[:, 20:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)
    for x, y in zip(s2, s_full):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_dropout_acts_with_one_layer():
    torch.manual_seed(0)
    net = CharRNN(30, hidden_size=16, num_layers=1, dropout=0.5)
    ids = torch.randint(0, 30, (2, 8))
    net.train()
    a, _ = net(ids)
    b, _ = net(ids)
    assert not torch.allclose(a, b)  # dropout is active in training mode
    net.eval()
    c, _ = net(ids)
    d, _ = net(ids)
    torch.testing.assert_close(c, d)


def test_charrnn_init():
    net = CharRNN(40, hidden_size=16, num_layers=2, init="charrnn")
    for name, p in net.named_parameters():
        if "bias" in name and "rnn" in name:
            continue
        assert p.abs().max() <= 0.08
    h = 16
    total_forget = net.rnn.bias_ih_l0[h : 2 * h] + net.rnn.bias_hh_l0[h : 2 * h]
    assert torch.allclose(total_forget, torch.ones(h))


def test_tied_weights_and_errors():
    net = CharRNN(40, hidden_size=16, embedding_dim=16, tie_weights=True)
    assert net.decoder.weight is net.embedding.weight
    with pytest.raises(CharLMError, match="tie_weights"):
        CharRNN(40, hidden_size=16, embedding_dim=8, tie_weights=True)
    with pytest.raises(CharLMError, match="cell"):
        CharRNN(40, cell="transformer")
    with pytest.raises(CharLMError, match="dropout"):
        CharRNN(40, dropout=1.5)
