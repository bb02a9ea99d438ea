"""Per-character internals of a :class:`~charlm.model.rnn.CharRNN`: every layer's hidden state,
LSTM cell state and gates at every time step.

``nn.LSTM`` returns the hidden state of the *last* layer for every step and the cell state of
the *last step* only, so the recurrence is re-run here one character at a time with the
model's recurrent step (:class:`charlm.model.step.FastStep`, which also gives the gates).
The logits it returns equal ``net(ids)`` up to float rounding (checked by the tests), since
dropout is off in eval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.model.step import GATES, FastStep


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
    step = FastStep(net)
    ids = ids.to(step.device)
    state = step.init_state(1)
    hs, cs, logits = [], [], []
    gates: dict[str, list[torch.Tensor]] = {g: [] for g in GATES[net.cell]}
    for t in range(ids.shape[0]):
        seen: dict[str, torch.Tensor] = {}
        out, state = step.step(ids[t : t + 1], state, gates=seen)
        logits.append(out[0])
        hs.append(state[0][:, 0])
        if net.cell == "lstm":
            cs.append(state[1][:, 0])
        for g in gates:
            gates[g].append(seen[g][:, 0])

    def np32(ts):  # T tensors [L, H] -> [L, T, H]
        return torch.stack(ts, dim=1).float().cpu().numpy()

    states = {"h": np32(hs)}
    if cs:
        states["c"] = np32(cs)
    logits_np = torch.stack(logits).float().cpu().numpy()
    return Trace(cell=net.cell, states=states, gates={g: np32(v) for g, v in gates.items()}, logits=logits_np)


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
