"""charlm.model.step: the recurrent step, one character through every layer (fast sampling and the
visualiser), against nn.LSTM / nn.GRU / nn.RNN and PyTorch's documented gate equations."""

from __future__ import annotations

import pytest
import torch

from charlm.model.rnn import CharRNN
from charlm.model.step import FastStep


def _reference_and_fast(net: CharRNN, n: int, steps: int):
    """Run the same random ids through ``net`` (one char per call) and ``FastStep``."""
    net.eval()
    fast = FastStep(net)
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


def _documented_gates(rnn: torch.nn.Module, layer: int, x: torch.Tensor, h: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gates of one layer from PyTorch's documented equations (nn.LSTM: i, f, g, o; nn.GRU:
    r, z, n), computed here from the module's raw weights: ``x`` is the layer's input, ``h`` its
    previous hidden state."""
    gi = torch.nn.functional.linear(x, getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}"))
    gh = torch.nn.functional.linear(h, getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))
    if isinstance(rnn, torch.nn.LSTM):
        i, f, _, o = (gi + gh).chunk(4, -1)
        return {"i": i.sigmoid(), "f": f.sigmoid(), "o": o.sigmoid()}
    (ri, zi, _), (rh, zh, _) = gi.chunk(3, -1), gh.chunk(3, -1)
    return {"r": (ri + rh).sigmoid(), "z": (zi + zh).sigmoid()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fast_step_returns_the_gates_of_nn_lstm_and_gru(cell):
    torch.manual_seed(0)
    net = CharRNN(vocab_size=30, hidden_size=16, num_layers=2, cell=cell, embedding_dim=8).eval()
    fast = FastStep(net)
    n = 3
    st_ref, st_fast = net.init_state(n), fast.init_state(n)
    g = torch.Generator().manual_seed(2)
    for _ in range(6):
        ids = torch.randint(0, 30, (n,), generator=g)
        with torch.no_grad():
            _, new_ref = net(ids[:, None], st_ref)
            want = []
            x = net.embedding(ids)
            for layer in range(2):
                want.append(_documented_gates(net.rnn, layer, x, st_ref[0][layer]) if cell != "rnn" else {})
                x = new_ref[0][layer]  # the next layer's input: this layer's new hidden state (nn.LSTM's)
        gates: dict = {}
        _, st_fast = fast.step(ids, st_fast, gates=gates)
        assert set(gates) == {"lstm": {"i", "f", "o"}, "gru": {"r", "z"}, "rnn": set()}[cell]
        for name, got in gates.items():
            assert got.shape == (2, n, 16)
            torch.testing.assert_close(got, torch.stack([w[name] for w in want]), rtol=0, atol=1e-5)
        st_ref = new_ref
