"""A fast one-character recurrent step for sampling, built from a :class:`CharRNN`'s weights.

Calling ``nn.LSTM`` once per character pays its per-call setup (weight checks, flattening,
a sequence loop of length 1) every character: ~107 chars/s for a 2x512 LSTM on a 2-core CPU.
Generation only ever needs one step, so :class:`FastStep` applies the same weights directly,
in eval mode (no dropout), with a fixed, small number of tensor ops per layer:

* layer 0's input projection is a table lookup: ``table = embedding @ W_ih0^T + b_ih0 (+ b_hh0)``,
  ``[V, G*H]``, computed once, so the embedding and ``W_ih0`` are never read per character;
* every layer then does one ``addmm`` for its recurrent (and, above layer 0, input)
  projection against pre-transposed, contiguous weights, plus the gate math of
  ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (same gate order and formulas as their documentation);
* the decoder is one ``addmm``.

Work per character is constant: nothing earlier (prime or output) is ever read again; the
state is carried. Weights may be held in a lower precision (``dtype=torch.bfloat16`` halves the
bytes read per character); the state and the gate math stay float32 for bf16, and the logits
are always float32.
"""

from __future__ import annotations

import torch
from torch import nn

from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN, State


class FastStep:
    """One-character step of a :class:`CharRNN` for inference (sampling, scoring one stream).

    Args:
        net: the model; its weights are copied (changes to ``net`` afterwards are not seen:
            build a new ``FastStep``).
        dtype: dtype of the weight matrices (default: the model's). ``torch.bfloat16`` halves
            the bytes read per character; products then run in bf16 and are accumulated and
            applied to a float32 state.

    Call ``step(ids, state) -> (logits, state)`` with ``ids`` int64 ``[N]`` (or ``[N, 1]``) and
    ``state`` as :meth:`CharRNN.init_state` gives (float32 tuple of ``[num_layers, N, H]``);
    ``logits`` is float32 ``[N, V]``. Equal to ``net(ids[:, None], state)`` in eval mode up to
    float rounding (see ``tests/test_sampling_fast.py``).

    Raises:
        CharLMError: if the model's recurrent module is not the ``nn.LSTM``/``GRU``/``RNN``
            that :class:`CharRNN` builds (e.g. projections or a bidirectional layer).
    """

    def __init__(self, net: CharRNN, dtype: torch.dtype | None = None):
        rnn = net.rnn
        if getattr(rnn, "bidirectional", False) or getattr(rnn, "proj_size", 0) or not rnn.bias or not rnn.batch_first:
            raise CharLMError("FastStep supports the unidirectional, biased, batch_first RNNs that CharRNN builds")
        if isinstance(rnn, nn.RNN) and rnn.nonlinearity != "tanh":
            self.act = torch.relu
        else:
            self.act = torch.tanh
        self.cell = net.cell
        self.num_layers = net.num_layers
        self.hidden_size = h = net.hidden_size
        p = next(net.parameters())
        self.device = p.device
        self.wdtype = dtype or p.dtype
        self.sdtype = torch.float32 if self.wdtype in (torch.bfloat16, torch.float16) else self.wdtype
        with torch.no_grad():
            emb = net.embedding.weight.detach().to(self.sdtype)
            w0 = rnn.weight_ih_l0.detach().to(self.sdtype)
            b_ih0 = rnn.bias_ih_l0.detach().to(self.sdtype)
            b_hh0 = rnn.bias_hh_l0.detach().to(self.sdtype)
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
                    self.w_in.append(getattr(rnn, f"weight_ih_l{layer}").detach().t().contiguous().to(self.wdtype))
                self.w_hh.append(w_hh.t().contiguous().to(self.wdtype))
                if self.cell == "gru":
                    # the r, z parts of b_hh add to the input side; b_hn stays with W_hn h
                    bias = b_ih.clone()
                    bias[: 2 * h] += b_hh[: 2 * h]
                    self.b.append(bias.to(self.sdtype) if layer > 0 else None)
                    self.b_hn.append(b_hh[2 * h :].to(self.sdtype).clone())
                else:
                    self.b.append((b_ih + b_hh).to(self.sdtype) if layer > 0 else None)
                    self.b_hn.append(None)
            self.w_dec = net.decoder.weight.detach().t().contiguous().to(self.wdtype)  # [H, V]
            self.b_dec = net.decoder.bias.detach().to(self.sdtype).clone()

    def weight_bytes_per_char(self) -> int:
        """Bytes of weights read per character for one stream (layer-0 table row excluded)."""
        mats = [w for w in self.w_in if w is not None] + self.w_hh + [self.w_dec]
        return sum(w.numel() * w.element_size() for w in mats)

    def init_state(self, n: int) -> State:
        """Zero state for ``n`` streams: tuple of float ``[num_layers, n, H]``."""
        shape = (self.num_layers, n, self.hidden_size)
        k = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, dtype=self.sdtype, device=self.device) for _ in range(k))

    def _mm(self, bias: torch.Tensor | None, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if w.dtype != x.dtype:
            out = x.to(w.dtype) @ w
            out = out.to(self.sdtype)
            return out if bias is None else out.add_(bias)
        return x @ w if bias is None else torch.addmm(bias, x, w)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Advance every stream by one character.

        Args:
            ids: int64 ``[N]`` or ``[N, 1]`` current characters.
            state: tuple of float ``[num_layers, N, H]`` (``(h, c)`` for an LSTM, ``(h,)`` else).

        Returns:
            ``(logits, state)``: float32 ``[N, V]`` logits of the next character and the new state.
        """
        ids = ids.reshape(-1)
        h_all = state[0]
        c_all = state[1] if self.cell == "lstm" else None
        hs, cs = [], []
        x = None
        H = self.hidden_size
        for layer in range(self.num_layers):
            h = h_all[layer]
            if layer == 0:
                gi = self.table.index_select(0, ids)  # [N, G*H]
            else:
                gi = self._mm(self.b[layer], x, self.w_in[layer])
            if self.cell == "lstm":
                gates = gi.add_(self._mm(None, h, self.w_hh[layer]))
                i, f, g, o = gates.chunk(4, 1)
                c = torch.addcmul(f.sigmoid() * c_all[layer], i.sigmoid(), g.tanh())
                h = o.sigmoid_().mul_(c.tanh())
                cs.append(c)
            elif self.cell == "gru":
                gh = self._mm(None, h, self.w_hh[layer])  # [N, 3H]
                rz = (gi[:, : 2 * H] + gh[:, : 2 * H]).sigmoid_()
                r, z = rz[:, :H], rz[:, H:]
                n = torch.tanh(gi[:, 2 * H :] + r * (gh[:, 2 * H :] + self.b_hn[layer]))
                h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            else:
                h = self.act(gi.add_(self._mm(None, h, self.w_hh[layer])))
            hs.append(h)
            x = h
        logits = self._mm(self.b_dec, x, self.w_dec)
        new_state: State = (torch.stack(hs), torch.stack(cs)) if self.cell == "lstm" else (torch.stack(hs),)
        return logits.float(), new_state
