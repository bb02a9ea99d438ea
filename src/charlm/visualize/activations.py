"""Per-character internals of a :class:`~charlm.model.rnn.CharRNN`: every layer's hidden state,
LSTM cell state and gates at every time step.

``nn.LSTM`` returns the hidden state of the *last* layer for every step and the cell state of
the *last step* only, so the recurrence is re-run here one step at a time from the module's own
weights, with PyTorch's equations (``torch.nn.LSTM`` / ``GRU`` / ``RNN`` documentation):

- LSTM (gate order i, f, g, o in ``weight_ih_l*``): ``i = σ(.)``, ``f = σ(.)``, ``g = tanh(.)``,
  ``o = σ(.)``, ``c' = f * c + i * g``, ``h' = o * tanh(c')``.
- GRU (order r, z, n): ``r = σ(.)``, ``z = σ(.)``, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``,
  ``h' = (1 - z) * n + z * h``.
- RNN: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or ReLU when the module uses it).

The logits it returns equal ``net(ids)`` (checked by the tests) because dropout is off in eval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN

#: The gates recorded per cell type (the names used in :attr:`Trace.gates`).
GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "rnn": ()}
#: The states that can shade the text per cell type.
STATES = {"lstm": ("c", "h"), "gru": ("h",), "rnn": ("h",)}


@dataclass
class Trace:
    """What a network computed over one text (one stream, batch size 1).

    Attributes:
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        states: ``{"h": [L, T, H], "c": [L, T, H]}`` float32 numpy arrays; ``states[s][l, t]`` is
            the state of layer ``l`` *after* reading character ``t`` (``c`` for LSTMs only).
        gates: ``{"i"|"f"|"o"|"r"|"z": [L, T, H]}`` float32 gate activations in [0, 1]
            (LSTM input/forget/output, GRU reset/update); empty for a plain RNN.
        logits: float32 ``[T, V]``; row ``t`` scores the character after character ``t``.
    """

    cell: str
    states: dict[str, np.ndarray]
    gates: dict[str, np.ndarray] = field(default_factory=dict)
    logits: np.ndarray | None = None

    @property
    def num_layers(self) -> int:
        return int(self.states["h"].shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.states["h"].shape[2])

    def __len__(self) -> int:
        return int(self.states["h"].shape[1])


@torch.no_grad()
def trace(net: CharRNN, ids: torch.Tensor | list[int]) -> Trace:
    """Run ``net`` over one sequence step by step and record every layer's states and gates.

    Args:
        net: the model (its device and dtype are used; dropout is ignored, as in eval mode).
        ids: int64 ``[T]`` character ids (``T >= 1``), starting from a zero state.

    Returns:
        A :class:`Trace` (numpy float32 arrays on the CPU).

    Raises:
        CharLMError: if ``ids`` is empty or not one-dimensional.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise CharLMError(f"trace needs a non-empty 1-D sequence of character ids, got shape {tuple(ids.shape)}")
    rnn = net.rnn
    device = net.decoder.weight.device
    dtype = net.decoder.weight.dtype
    x = net.embedding(ids.to(device)).to(dtype)  # [T, E]
    T, H, cell = x.shape[0], net.hidden_size, net.cell
    hs, cs, gates = [], [], {g: [] for g in GATES[cell]}
    for layer in range(net.num_layers):
        w_ih = getattr(rnn, f"weight_ih_l{layer}")
        w_hh = getattr(rnn, f"weight_hh_l{layer}")
        b_ih = getattr(rnn, f"bias_ih_l{layer}", None)
        b_hh = getattr(rnn, f"bias_hh_l{layer}", None)
        xin = F.linear(x, w_ih, b_ih)  # [T, G*H]: the input part of every step at once
        h = torch.zeros(H, device=device, dtype=dtype)
        c = torch.zeros(H, device=device, dtype=dtype)
        out_h = torch.empty(T, H, device=device, dtype=dtype)
        out_c = torch.empty(T, H, device=device, dtype=dtype) if cell == "lstm" else None
        out_g = {g: torch.empty(T, H, device=device, dtype=dtype) for g in GATES[cell]}
        for t in range(T):
            rec = F.linear(h, w_hh, b_hh)
            if cell == "lstm":
                pre = xin[t] + rec
                i, f, g, o = pre.chunk(4)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                c = f * c + i * g
                h = o * torch.tanh(c)
                out_c[t] = c
                out_g["i"][t], out_g["f"][t], out_g["o"][t] = i, f, o
            elif cell == "gru":
                xr, xz, xn = xin[t].chunk(3)
                hr, hz, hn = rec.chunk(3)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
                out_g["r"][t], out_g["z"][t] = r, z
            else:
                pre = xin[t] + rec
                h = torch.relu(pre) if getattr(rnn, "nonlinearity", "tanh") == "relu" else torch.tanh(pre)
            out_h[t] = h
        hs.append(out_h)
        if out_c is not None:
            cs.append(out_c)
        for g in gates:
            gates[g].append(out_g[g])
        x = out_h  # the next layer's input (inter-layer dropout is off in eval)
    logits = net.decoder(x)  # [T, V]

    def np32(ts):
        return torch.stack(ts).float().cpu().numpy()

    states = {"h": np32(hs)}
    if cs:
        states["c"] = np32(cs)
    return Trace(cell=cell, states=states, gates={g: np32(v) for g, v in gates.items()}, logits=logits.float().cpu().numpy())


def next_char_stats(trace_: Trace, ids: np.ndarray | list[int], k: int = 5) -> dict[str, np.ndarray]:
    """Top-``k`` next-character predictions and the loss of the actual next character.

    Args:
        trace_: from :func:`trace` over ``ids``.
        ids: int ``[T]`` the same ids.
        k: how many predictions per position (capped at the vocabulary size).

    Returns:
        ``{"top_ids": int64 [T, k], "top_probs": float32 [T, k], "loss": float32 [T]}``;
        ``loss[t] = -ln p(ids[t+1] | ids[..t])`` in nats, NaN for the last position (no next
        character is known).
    """
    logits = torch.from_numpy(trace_.logits)
    logp = torch.log_softmax(logits, dim=-1)
    k = min(k, logits.shape[-1])
    top_lp, top_ids = logp.topk(k, dim=-1)
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    loss = torch.full((logits.shape[0],), float("nan"))
    if ids_t.numel() > 1:
        loss[:-1] = -logp[:-1].gather(1, ids_t[1:, None]).squeeze(1)
    return {"top_ids": top_ids.numpy(), "top_probs": top_lp.exp().numpy().astype(np.float32), "loss": loss.numpy().astype(np.float32)}


def gate_saturation(trace_: Trace, low: float = 0.1, high: float = 0.9) -> dict[str, np.ndarray]:
    """Fraction of time each gate unit is left- or right-saturated (Karpathy, Johnson & Fei-Fei
    2015, "Visualizing and Understanding Recurrent Networks", Fig. 3: thresholds 0.1 and 0.9).

    Returns:
        ``{gate: float64 [L, H, 2]}``: ``[..., 0]`` the fraction of steps with activation
        ``< low``, ``[..., 1]`` with activation ``> high``. Empty for a plain RNN (no gates).
    """
    return {g: np.stack([(a < low).mean(axis=1), (a > high).mean(axis=1)], axis=-1) for g, a in trace_.gates.items()}
