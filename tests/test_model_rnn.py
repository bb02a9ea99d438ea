"""charlm.model.rnn: the network (embedding -> LSTM/GRU/RNN -> logits): shapes, the carried
state, dropout, init, tied weights and the AWD-LSTM regularisers."""

from __future__ import annotations

import warnings

import pytest
import torch

from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.model.step import FastStep


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


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_dropout_with_one_layer_applies_without_a_pytorch_warning(cell):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nn.LSTM(dropout>0, num_layers=1) warns: this fails on it
        net = CharRNN(vocab_size=20, hidden_size=16, num_layers=1, cell=cell, dropout=0.5)
        x = torch.randint(0, 20, (4, 12))
        net.train()
        a, _ = net(x)
        b, _ = net(x)
    assert not torch.equal(a, b)  # dropout acts in training
    net.eval()
    assert torch.equal(net(x)[0], net(x)[0])  # and not in evaluation
    no_drop = CharRNN(vocab_size=20, hidden_size=16, num_layers=1, cell=cell, dropout=0.0).train()
    assert torch.equal(no_drop(x)[0], no_drop(x)[0])


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


# ------------------------------------------------------------------ AWD-LSTM regularisers
REGS = {"input_dropout": 0.3, "hidden_dropout": 0.25, "output_dropout": 0.4, "embedding_dropout": 0.1, "weight_drop": 0.5}


def _plain_copy(net: CharRNN):
    """The same weights in plain torch modules: embedding -> nn.LSTM/GRU/RNN -> linear."""
    emb = torch.nn.Embedding.from_pretrained(net.embedding.weight.detach().clone())
    rnn = type(net.rnn)(net.embedding_dim, net.hidden_size, net.num_layers, batch_first=True)
    rnn.load_state_dict(net.rnn.state_dict())
    dec = torch.nn.Linear(net.hidden_size, net.vocab_size)
    dec.load_state_dict(net.decoder.state_dict())
    return lambda ids, h=None: dec(rnn(emb(ids), h)[0])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_regularised_model_in_eval_mode_is_the_plain_network(cell):
    torch.manual_seed(0)
    net = CharRNN(40, hidden_size=24, num_layers=3, cell=cell, dropout=0.2, **REGS).eval()
    ids = torch.randint(0, 40, (3, 17))
    torch.testing.assert_close(net(ids)[0], _plain_copy(net)(ids), rtol=0, atol=0)
    # the regularised training path with every probability 0 is the plain recurrence too
    x = torch.randn(3, 17, 24)
    ref_out, ref_state = net.rnn(x)
    out, state = net._regularised_rnn(x, None, weight_drop=0.0, hidden_dropout=0.0)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    # one layer at a time (the hidden_dropout path) with a mask that keeps everything
    out, state2 = net._regularised_rnn(x, None, weight_drop=0.0, hidden_dropout=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    ref = ref_state if cell == "lstm" else (ref_state,)
    for a, b in zip(state2, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_regularisers_off_leave_training_bit_identical():
    torch.manual_seed(0)
    net = CharRNN(40, hidden_size=24, num_layers=2, dropout=0.3).train()
    ids = torch.randint(0, 40, (4, 9))
    torch.manual_seed(1)
    a, _ = net(ids)
    torch.manual_seed(1)
    b = net.decoder(net.drop(net.rnn(net.embedding(ids))[0]))  # the network as it was before the options
    assert torch.equal(a, b)
    assert {k: net.config()[k] for k in REGS} == dict.fromkeys(REGS, 0.0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_drop_masks_weight_hh_and_trains_the_parameter(cell):
    torch.manual_seed(0)
    net = CharRNN(30, hidden_size=16, num_layers=2, cell=cell, weight_drop=0.5).train()
    before = net.rnn.weight_hh_l0.detach().clone()
    ids = torch.randint(0, 30, (2, 12))
    a, state = net(ids)
    b, _ = net(ids)
    assert not torch.allclose(a, b)  # a new mask each forward pass
    assert len(state) == (2 if cell == "lstm" else 1) and state[0].shape == (2, 2, 16)
    a.sum().backward()
    for layer in range(2):
        g = getattr(net.rnn, f"weight_hh_l{layer}").grad
        assert g is not None and g.abs().sum() > 0
        # DropConnect: about half of the matrix's entries got no gradient in this pass
        assert 0.3 < (g == 0).float().mean() < 0.7
    assert torch.equal(net.rnn.weight_hh_l0, before)  # the parameter itself is never overwritten
    net.eval()
    torch.testing.assert_close(net(ids)[0], _plain_copy(net)(ids), rtol=0, atol=0)


def test_locked_and_embedding_dropout_masks():
    from charlm.model.rnn import embedding_dropout, locked_dropout

    torch.manual_seed(0)
    x = torch.ones(4, 10, 32)
    y = locked_dropout(x, 0.5)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every time step
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert locked_dropout(x, 0.5, training=False) is x
    emb = torch.nn.Embedding(8, 5)
    ids = torch.arange(8).repeat(3, 1)
    e = embedding_dropout(emb, ids, 0.5)
    dropped = (e == 0).all(-1)  # [3, 8]: a character is dropped everywhere in the batch or nowhere
    assert dropped.any() and torch.equal(dropped, dropped[:1].expand_as(dropped))
    kept = ~dropped[0]
    torch.testing.assert_close(e[0, kept], emb.weight[kept] * 2)


def test_regularised_model_samples_fast_and_reloads():
    torch.manual_seed(0)
    net = CharRNN(30, hidden_size=16, num_layers=2, **REGS)
    again = CharRNN(**net.config())
    again.load_state_dict(net.state_dict())
    assert again.config() == net.config()
    net.eval()
    ids = torch.randint(0, 30, (3,))
    state = net.init_state(3)
    logits, _ = FastStep(net).step(ids, state)
    torch.testing.assert_close(logits, net(ids[:, None], state)[0][:, 0], rtol=1e-5, atol=1e-5)


def test_regulariser_bounds():
    for name in REGS:
        with pytest.raises(CharLMError, match=name):
            CharRNN(40, **{name: 1.0})
