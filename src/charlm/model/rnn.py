"""The network: embedding -> stacked LSTM / GRU / RNN -> dropout -> linear decoder (logits).

As in char-rnn (Karpathy 2015) and PyTorch's word_language_model example. The recurrent state
is an explicit argument and result of :meth:`CharRNN.forward`, so callers carry it across
windows (training), across characters (sampling) and across ranks (checkpointing).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import CharLMError

#: The recurrent state: ``(h, c)`` for an LSTM, ``(h,)`` for a GRU or RNN; each
#: float ``[num_layers, B, hidden_size]``.
State = tuple[torch.Tensor, ...]

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
#: The fused multi-layer recurrences that ``nn.LSTM``/``GRU``/``RNN`` (tanh) call (cuDNN on a GPU).
_OPS = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}
INITS = ("pytorch", "charrnn")
#: The regularisers of Merity, Keskar & Socher (2018, AWD-LSTM), all off by default.
REGULARISERS = ("input_dropout", "hidden_dropout", "output_dropout", "embedding_dropout", "weight_drop")


def locked_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Variational ("locked") dropout: one mask per sequence, the same at every time step.

    Gal & Ghahramani (2016, "A Theoretically Grounded Application of Dropout in Recurrent Neural
    Networks"); ``LockedDropout`` of Merity et al. (2018, AWD-LSTM). Kept units are scaled by
    ``1 / (1 - p)``.

    Args:
        x: float ``[B, T, F]``.
        p: drop probability in [0, 1); 0 (or ``training=False``) returns ``x`` itself.
    """
    if not training or p == 0.0:
        return x
    mask = x.new_empty((x.size(0), 1, x.size(2))).bernoulli_(1.0 - p).div_(1.0 - p)
    return x * mask


def embedding_dropout(embedding: nn.Embedding, ids: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Embed ``ids`` with whole rows of the embedding matrix dropped: a dropped character is
    zero wherever it occurs in the batch (Gal & Ghahramani 2016; ``embedded_dropout`` of Merity
    et al. 2018). Kept rows are scaled by ``1 / (1 - p)``.

    Args:
        embedding: the embedding module (its weight ``[V, E]``).
        ids: int64 ``[B, T]``.
        p: drop probability in [0, 1); 0 (or ``training=False``) is the plain embedding.

    Returns:
        float ``[B, T, E]``.
    """
    if not training or p == 0.0:
        return embedding(ids)
    w = embedding.weight
    mask = w.new_empty((w.size(0), 1)).bernoulli_(1.0 - p).div_(1.0 - p)
    return F.embedding(ids, w * mask, embedding.padding_idx, embedding.max_norm, embedding.norm_type,
                       embedding.scale_grad_by_freq, embedding.sparse)


@dataclass
class CharRNNConfig:
    """The settings of a :class:`CharRNN`: its constructor arguments, checked and normalised
    (``cell`` lower-case, ``embedding_dim`` resolved, plain ``int``/``float``/``bool``), in the
    order :meth:`CharRNN.config` stores them in checkpoints.

    Args:
        vocab_size: number of characters ``V``.
        hidden_size: units per recurrent layer ``H`` (char-rnn's ``rnn_size``, default 128 there).
        num_layers: stacked recurrent layers (char-rnn default 2).
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"`` (tanh).
        embedding_dim: input embedding size ``E`` (default ``hidden_size``). char-rnn fed one-hot
            vectors; a learned embedding of size ``V`` or more is equivalent and cheaper.
        dropout: probability applied between recurrent layers *and* before the decoder, so it
            acts with one layer too (char-rnn applied it between layers only).
        tie_weights: share the embedding and decoder matrices (Press & Wolf 2017); needs
            ``embedding_dim == hidden_size``.
        init: ``"pytorch"`` (PyTorch defaults) or ``"charrnn"``: every parameter uniform in
            [-0.08, 0.08] and LSTM forget-gate biases 1 (char-rnn's ``train.lua``).
        input_dropout: locked dropout (:func:`locked_dropout`) on the embedding's output, the
            first layer's input (AWD-LSTM's ``dropouti``).
        hidden_dropout: locked dropout between recurrent layers (AWD-LSTM's ``dropouth``); the
            layers then run one at a time in training (``dropout`` still applies there too).
        output_dropout: locked dropout on the last layer's output, before the decoder (AWD-LSTM's
            ``dropout``; ``dropout`` still applies too).
        embedding_dropout: drop whole characters' embedding rows (:func:`embedding_dropout`;
            AWD-LSTM's ``dropoute``).
        weight_drop: DropConnect (Wan et al. 2013) on every layer's hidden-to-hidden matrix
            ``weight_hh_l*``, one mask per forward pass (AWD-LSTM's ``wdrop``, Merity, Keskar &
            Socher 2018, "Regularizing and Optimizing LSTM Language Models"). The recurrence
            still runs as one fused ``torch.lstm``/``gru``/``rnn_tanh`` call, the op ``nn.LSTM``
            uses (cuDNN on a GPU), with the dropped matrix in place of the parameter.

    Raises:
        CharLMError: on an unknown cell or init, non-positive sizes, a dropout or weight-drop
            probability outside [0, 1), or ``tie_weights`` with mismatched sizes.
    """

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 2
    cell: str = "lstm"
    embedding_dim: int | None = None
    dropout: float = 0.0
    tie_weights: bool = False
    init: str = "pytorch"
    input_dropout: float = 0.0
    hidden_dropout: float = 0.0
    output_dropout: float = 0.0
    embedding_dropout: float = 0.0
    weight_drop: float = 0.0

    def __post_init__(self) -> None:
        self.cell = self.cell.lower()
        if self.cell not in CELLS:
            raise CharLMError(f"model.cell={self.cell!r} is not one of {sorted(CELLS)}")
        if self.init not in INITS:
            raise CharLMError(f"model.init={self.init!r} is not one of {list(INITS)}")
        if min(self.vocab_size, self.hidden_size, self.num_layers) < 1:
            raise CharLMError(
                "vocab_size, hidden_size and num_layers must be >= 1, "
                f"got {self.vocab_size}, {self.hidden_size}, {self.num_layers}"
            )
        for name in ("dropout", *REGULARISERS):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise CharLMError(f"model.{name}={value} must be in [0, 1)")
        self.embedding_dim = int(self.embedding_dim or self.hidden_size)
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            raise CharLMError(
                f"model.tie_weights needs embedding_dim == hidden_size, got {self.embedding_dim} and {self.hidden_size}"
            )
        for name in ("vocab_size", "hidden_size", "num_layers"):
            setattr(self, name, int(getattr(self, name)))
        for name in ("dropout", *REGULARISERS):
            setattr(self, name, float(getattr(self, name)))
        self.tie_weights = bool(self.tie_weights)


class CharRNN(nn.Module):
    """Stacked recurrent character model.

    Takes the arguments of :class:`CharRNNConfig` (``CharRNN(65, hidden_size=512, cell="gru")``),
    which documents them; each setting is also an attribute (``net.hidden_size``, ``net.cell``).

    The five regularisers act in training mode only and default to 0 (off): in eval mode, or
    with all five at 0, :meth:`forward` is exactly ``nn.LSTM``/``GRU``/``RNN`` on the embedding
    (same result, same random numbers drawn), so sampling, the visualiser and checkpoints see a
    plain recurrent module whatever the settings.

    Raises:
        CharLMError: on a bad setting (see :class:`CharRNNConfig`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        cfg = CharRNNConfig(*args, **kwargs)
        self.settings = cfg
        for f in fields(cfg):  # net.hidden_size, net.cell, ...: read by the step, the trainer, the tests
            setattr(self, f.name, getattr(cfg, f.name))
        hidden_size, num_layers, dropout = cfg.hidden_size, cfg.num_layers, cfg.dropout

        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        # nn.LSTM's own dropout acts between layers only (and warns with one layer).
        self.rnn = CELLS[cfg.cell](
            cfg.embedding_dim, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, cfg.vocab_size)
        if cfg.tie_weights:
            self.decoder.weight = self.embedding.weight
        if cfg.init == "charrnn":
            self._init_charrnn()

    def _init_charrnn(self) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.08, 0.08)
            if self.cell == "lstm":  # gates are ordered (input, forget, cell, output)
                h = self.hidden_size
                for layer in range(self.num_layers):
                    getattr(self.rnn, f"bias_ih_l{layer}")[h : 2 * h].fill_(1.0)
                    getattr(self.rnn, f"bias_hh_l{layer}")[h : 2 * h].fill_(0.0)

    def config(self) -> dict:
        """Constructor arguments as plain types (stored in checkpoints): :class:`CharRNNConfig`
        as a dict, ``CharRNN(**net.config())`` rebuilds the network."""
        return asdict(self.settings)

    def init_state(self, batch_size: int, device: torch.device | str | None = None, dtype=None) -> State:
        """Zero state for ``batch_size`` streams: tuple of float ``[num_layers, B, H]``."""
        shape = (self.num_layers, batch_size, self.hidden_size)
        device = device if device is not None else self.decoder.weight.device
        dtype = dtype or self.decoder.weight.dtype
        n = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(n))

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Next-character logits for every position.

        Args:
            ids: int64 ``[B, T]`` character ids.
            state: previous state (see :data:`State`) or ``None`` for zeros.

        Returns:
            ``(logits, state)``: float ``[B, T, V]`` unnormalised log-probabilities of the next
            character, and the state after the last position.
        """
        train = self.training
        emb = embedding_dropout(self.embedding, ids, self.embedding_dropout, train)  # [B, T, E]
        emb = locked_dropout(emb, self.input_dropout, train)
        if train and (self.weight_drop or self.hidden_dropout):
            out, new_state = self._regularised_rnn(emb, state)
        else:
            if state is None:
                out, new = self.rnn(emb)
            else:
                out, new = self.rnn(emb, state if self.cell == "lstm" else state[0])
            new_state = tuple(new) if self.cell == "lstm" else (new,)
        out = locked_dropout(out, self.output_dropout, train)
        logits = self.decoder(self.drop(out))  # [B, T, V]
        return logits, new_state

    def _regularised_rnn(self, x: torch.Tensor, state: State | None, weight_drop: float | None = None,
                         hidden_dropout: float | None = None) -> tuple[torch.Tensor, State]:
        """The recurrence with weight drop and/or locked dropout between layers (training).

        Calls the fused op ``nn.LSTM``/``GRU``/``RNN`` calls (``torch.lstm``/``gru``/``rnn_tanh``:
        cuDNN on a GPU) with this module's parameters, ``weight_hh_l*`` replaced by a DropConnect
        of it; with ``hidden_dropout`` one call per layer and a locked mask in between. With both
        probabilities 0 it equals ``self.rnn(x, state)`` in eval mode (checked by the tests).

        Args:
            x: float ``[B, T, E]``; state: see :data:`State` (``None``: zeros).

        Returns:
            ``(out [B, T, H], state)``.
        """
        wd = self.weight_drop if weight_drop is None else weight_drop
        hd = self.hidden_dropout if hidden_dropout is None else hidden_dropout
        rnn = self.rnn
        if state is None:
            state = self.init_state(x.size(0), x.device, x.dtype)
        layers = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            if wd:
                w_hh = F.dropout(w_hh, wd, training=True)
            layers.append([w_ih, w_hh, b_ih, b_hh])
        op = _OPS[self.cell]
        lstm = self.cell == "lstm"
        between = rnn.dropout if self.training else 0.0
        with warnings.catch_warnings():
            # cuDNN copies the (partly dropped) weights into its buffer each call, as AWD-LSTM's WeightDrop did
            warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk of memory.*")
            if not hd:
                hx = tuple(state) if lstm else state[0]
                flat = [w for ws in layers for w in ws]
                res = op(x, hx, flat, True, self.num_layers, between, self.training, False, True)
                return res[0], (tuple(res[1:]) if lstm else (res[1],))
            hs, cs = [], []
            for layer, ws in enumerate(layers):
                if layer > 0:
                    x = locked_dropout(x, hd, True)
                    if between:
                        x = F.dropout(x, between, training=True)
                hx = (state[0][layer : layer + 1], state[1][layer : layer + 1]) if lstm else state[0][layer : layer + 1]
                res = op(x, hx, ws, True, 1, 0.0, self.training, False, True)
                x = res[0]
                hs.append(res[1])
                if lstm:
                    cs.append(res[2])
        new_state: State = (torch.cat(hs), torch.cat(cs)) if lstm else (torch.cat(hs),)
        return x, new_state

    def num_parameters(self) -> int:
        """Number of distinct trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Forward+backward FLOPs per character (2 per multiply-add, backward = 2x forward).

        Counts the recurrent and decoder matrix products, which dominate:
        ``gates * H * (E + H)`` per layer (the first layer's input is ``E``), plus ``H * V``.
        """
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[self.cell]
        macs = 0
        for layer in range(self.num_layers):
            inp = self.embedding_dim if layer == 0 else self.hidden_size
            macs += gates * self.hidden_size * (inp + self.hidden_size)
        macs += self.hidden_size * self.vocab_size
        return 2 * 3 * macs

