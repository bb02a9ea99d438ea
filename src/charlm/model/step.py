"""The recurrent step of a :class:`~charlm.model.rnn.CharRNN`, written once: one character
through every layer, from the model's own weights, optionally returning the gates.

It serves sampling (:func:`charlm.sampling.sample`: each new character is one step on the
carried state) and the visualiser (:func:`charlm.visualize.activations.trace`: every layer's
states and gates at every character), and is checked against ``nn.LSTM`` / ``nn.GRU`` /
``nn.RNN`` in tests/test_model_step.py.

Calling ``nn.LSTM`` once per character pays its per-call setup (weight checks, flattening, a
sequence loop of length 1) every character; :class:`FastStep` applies the same weights with a
fixed, small number of tensor ops per layer (BENCHMARKS.md, "Sampling", has the measurements):

* layer 0's input projection is a table lookup: ``table = embedding @ W_ih0^T + b_ih0 (+ b_hh0)``,
  ``[V, G*H]``, computed once, so the embedding and ``W_ih0`` are never read per character;
* every layer then does one ``addmm`` for its recurrent (and, above layer 0, input)
  projection against pre-transposed, contiguous weights, plus the gate math of
  ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (tanh), with their gate order and formulas
  (PyTorch documentation):

  - LSTM (order i, f, g, o): ``i = σ(.)``, ``f = σ(.)``, ``g = tanh(.)``, ``o = σ(.)``,
    ``c' = f * c + i * g``, ``h' = o * tanh(c')``;
  - GRU (order r, z, n): ``r = σ(.)``, ``z = σ(.)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``;
  - RNN: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``;
* the decoder is one ``addmm``.

Everything runs in eval mode (no dropout) and in the model's dtype. Work per character is
constant: nothing earlier is ever read again; the state is carried.
"""

from __future__ import annotations

import torch

from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN, State

#: The gates :meth:`FastStep.step` returns per cell type, in [0, 1] (LSTM input/forget/output,
#: GRU reset/update; a plain RNN has none).
GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "rnn": ()}


class FastStep:
    """One-character step of a :class:`CharRNN` for inference (sampling, the visualiser).

    Args:
        net: the model; its weights are copied (changes to ``net`` afterwards are not seen:
            build a new ``FastStep``).

    Call ``step(ids, state) -> (logits, state)`` with ``ids`` int64 ``[N]`` (or ``[N, 1]``) and
    ``state`` as :meth:`CharRNN.init_state` gives (tuple of ``[num_layers, N, H]``); ``logits``
    is ``[N, V]`` in the model's dtype. Equal to ``net(ids[:, None], state)`` in eval mode up to
    float rounding (tests/test_model_step.py).

    Raises:
        CharLMError: if the model's recurrent module is not the ``nn.LSTM``/``GRU``/``RNN``
            (tanh) that :class:`CharRNN` builds (e.g. projections or a bidirectional layer).
    """

    def __init__(self, net: CharRNN):
        rnn = net.rnn
        if (getattr(rnn, "bidirectional", False) or getattr(rnn, "proj_size", 0) or not rnn.bias or not rnn.batch_first
                or getattr(rnn, "nonlinearity", "tanh") != "tanh"):
            raise CharLMError("FastStep supports the unidirectional, biased, batch_first, tanh RNNs that CharRNN builds")
        self.cell = net.cell
        self.num_layers = net.num_layers
        self.hidden_size = h = net.hidden_size
        p = next(net.parameters())
        self.device = p.device
        self.dtype = p.dtype
        with torch.no_grad():
            emb = net.embedding.weight.detach()
            w0 = rnn.weight_ih_l0.detach()
            b_ih0 = rnn.bias_ih_l0.detach()
            b_hh0 = rnn.bias_hh_l0.detach()
            table = torch.addmm(b_ih0, emb, w0.t())  # [V, G*H]
            if self.cell == "gru":  # a GRU keeps b_hn inside r * (W_hn h + b_hn)
                table[:, : 2 * h] += b_hh0[: 2 * h]
            else:
                table = table + b_hh0
            self.table = table.contiguous()
            # per layer: input weight^T [in, G*H] (None for layer 0), recurrent weight^T [H, G*H], bias [G*H]
            self.w_in: list[torch.Tensor | None] = [None]
            self.w_hh: list[torch.Tensor] = []
            self.b: list[torch.Tensor | None] = []
            self.b_hn: list[torch.Tensor | None] = []
            for layer in range(self.num_layers):
                w_hh = getattr(rnn, f"weight_hh_l{layer}").detach()
                b_ih = getattr(rnn, f"bias_ih_l{layer}").detach()
                b_hh = getattr(rnn, f"bias_hh_l{layer}").detach()
                if layer > 0:
                    self.w_in.append(getattr(rnn, f"weight_ih_l{layer}").detach().t().contiguous())
                self.w_hh.append(w_hh.t().contiguous())
                if self.cell == "gru":
                    # the r, z parts of b_hh add to the input side; b_hn stays with W_hn h
                    bias = b_ih.clone()
                    bias[: 2 * h] += b_hh[: 2 * h]
                    self.b.append(bias if layer > 0 else None)
                    self.b_hn.append(b_hh[2 * h :].clone())
                else:
                    self.b.append((b_ih + b_hh) if layer > 0 else None)
                    self.b_hn.append(None)
            self.w_dec = net.decoder.weight.detach().t().contiguous()  # [H, V]
            self.b_dec = net.decoder.bias.detach().clone()

    def weight_bytes_per_char(self) -> int:
        """Bytes of weights read per character for one stream (layer-0 table row excluded)."""
        mats = [w for w in self.w_in if w is not None] + self.w_hh + [self.w_dec]
        return sum(w.numel() * w.element_size() for w in mats)

    def init_state(self, n: int) -> State:
        """Zero state for ``n`` streams: tuple of ``[num_layers, n, H]`` in the model's dtype."""
        shape = (self.num_layers, n, self.hidden_size)
        k = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(k))

    @staticmethod
    def _mm(bias: torch.Tensor | None, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w if bias is None else torch.addmm(bias, x, w)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state: State, gates: dict[str, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, State]:
        """Advance every stream by one character.

        Args:
            ids: int64 ``[N]`` or ``[N, 1]`` current characters.
            state: tuple of ``[num_layers, N, H]`` (``(h, c)`` for an LSTM, ``(h,)`` else).
            gates: a dict to fill with this step's gate activations, ``{name: [num_layers, N, H]}``
                for the names in :data:`GATES` (``None``: not recorded, as sampling does).

        Returns:
            ``(logits, state)``: ``[N, V]`` logits of the next character and the new state.
        """
        ids = ids.reshape(-1)
        h_all = state[0]
        c_all = state[1] if self.cell == "lstm" else None
        hs, cs = [], []
        seen: dict[str, list[torch.Tensor]] = {g: [] for g in GATES[self.cell]} if gates is not None else {}
        x = None
        H = self.hidden_size
        for layer in range(self.num_layers):
            h = h_all[layer]
            if layer == 0:
                gi = self.table.index_select(0, ids)  # [N, G*H]
            else:
                gi = self._mm(self.b[layer], x, self.w_in[layer])
            if self.cell == "lstm":
                pre = gi.add_(self._mm(None, h, self.w_hh[layer]))
                i, f, g, o = pre.chunk(4, 1)
                i, f = i.sigmoid(), f.sigmoid()
                c = torch.addcmul(f * c_all[layer], i, g.tanh())
                o = o.sigmoid_()
                if gates is not None:
                    seen["i"].append(i)
                    seen["f"].append(f)
                    seen["o"].append(o.clone())
                h = o.mul_(c.tanh())
                cs.append(c)
            elif self.cell == "gru":
                gh = self._mm(None, h, self.w_hh[layer])  # [N, 3H]
                rz = (gi[:, : 2 * H] + gh[:, : 2 * H]).sigmoid_()
                r, z = rz[:, :H], rz[:, H:]
                n = torch.tanh(gi[:, 2 * H :] + r * (gh[:, 2 * H :] + self.b_hn[layer]))
                h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
                if gates is not None:
                    seen["r"].append(r)
                    seen["z"].append(z)
            else:
                h = torch.tanh(gi.add_(self._mm(None, h, self.w_hh[layer])))
            hs.append(h)
            x = h
        logits = self._mm(self.b_dec, x, self.w_dec)
        if gates is not None:
            gates.update({name: torch.stack(v) for name, v in seen.items()})
        new_state: State = (torch.stack(hs), torch.stack(cs)) if self.cell == "lstm" else (torch.stack(hs),)
        return logits, new_state
