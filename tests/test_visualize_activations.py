"""charlm.visualize.activations: the step-by-step trace of every layer's states and gates (against
PyTorch's own recurrent modules), the next-character statistics and the gates' saturation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charlm.data.vocab import Vocab
from charlm.model.rnn import CharRNN
from charlm.visualize import gate_saturation, next_char_stats, trace
from conftest import shakespeare_excerpt


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_trace_equals_pytorch_modules(cell, shakespeare_path):
    torch.manual_seed(0)
    text = shakespeare_excerpt(120)
    vocab = Vocab(sorted(set(shakespeare_path.read_text(encoding="utf-8"))))
    net = CharRNN(len(vocab), hidden_size=24, num_layers=2, cell=cell, embedding_dim=16, dropout=0.3).eval()
    ids = torch.tensor(vocab.encode(text))
    tr = trace(net, ids)
    T = len(text)
    assert tr.states["h"].shape == (2, T, 24)
    assert set(tr.states) == ({"h", "c"} if cell == "lstm" else {"h"})
    with torch.no_grad():
        logits, state = net(ids[None])
        out, _ = net.rnn(net.embedding(ids[None]))
    np.testing.assert_allclose(tr.logits, logits[0].numpy(), atol=2e-5)
    np.testing.assert_allclose(tr.states["h"][-1], out[0].numpy(), atol=2e-6)  # last layer, every step
    np.testing.assert_allclose(tr.states["h"][:, -1], state[0][:, 0].numpy(), atol=2e-6)  # every layer, last step
    # every layer's state at a few earlier steps = PyTorch's final state over the prefix
    for t in (0, 17, 63):
        with torch.no_grad():
            _, st = net(ids[None, : t + 1])
        np.testing.assert_allclose(tr.states["h"][:, t], st[0][:, 0].numpy(), atol=2e-6)
        if cell == "lstm":
            np.testing.assert_allclose(tr.states["c"][:, t], st[1][:, 0].numpy(), atol=2e-6)
    gates = {"lstm": {"i", "f", "o"}, "gru": {"r", "z"}, "rnn": set()}[cell]
    assert set(tr.gates) == gates
    for g in tr.gates.values():
        assert g.shape == (2, T, 24) and g.min() >= 0 and g.max() <= 1
    sat = gate_saturation(tr)
    for s in sat.values():
        assert s.shape == (2, 24, 2) and (s.sum(-1) <= 1 + 1e-12).all()


def test_next_char_stats(shakespeare_path):
    torch.manual_seed(1)
    text = shakespeare_excerpt(50)
    vocab = Vocab(sorted(set(shakespeare_path.read_text(encoding="utf-8"))))
    net = CharRNN(len(vocab), hidden_size=16, num_layers=1).eval()
    ids = vocab.encode(text)
    st = next_char_stats(trace(net, ids), ids)
    with torch.no_grad():
        logp = torch.log_softmax(net(torch.tensor([ids]))[0][0], -1)
    assert st["top_ids"].shape == (50, 5)
    assert (st["top_ids"][:, 0] == logp.argmax(-1).numpy()).all()
    np.testing.assert_allclose(st["top_probs"][:, 0], logp.max(-1).values.exp().numpy(), rtol=1e-5)
    assert (np.diff(st["top_probs"], axis=1) <= 0).all()
    np.testing.assert_allclose(st["loss"][:-1], -logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy(), rtol=1e-5)
    assert math.isnan(st["loss"][-1])
