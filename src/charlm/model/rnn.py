"""The network: embedding -> stacked LSTM / GRU / RNN -> dropout -> linear decoder (logits).

As in char-rnn (Karpathy 2015) and PyTorch's word_language_model example. The recurrent state
is an explicit argument and result of :meth:`CharRNN.forward`, so callers carry it across
windows (training), across characters (sampling) and across ranks (checkpointing).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from charlm.errors import CharLMError

#: The recurrent state: ``(h, c)`` for an LSTM, ``(h,)`` for a GRU or RNN; each
#: float ``[num_layers, B, hidden_size]``.
State = tuple[torch.Tensor, ...]

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
INITS = ("pytorch", "charrnn")


class CharRNN(nn.Module):
    """Stacked recurrent character model.

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

    Raises:
        CharLMError: on an unknown cell or init, non-positive sizes, dropout outside [0, 1), or
            ``tie_weights`` with mismatched sizes.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        cell: str = "lstm",
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        tie_weights: bool = False,
        init: str = "pytorch",
    ):
        super().__init__()
        cell = cell.lower()
        if cell not in CELLS:
            raise CharLMError(f"model.cell={cell!r} is not one of {sorted(CELLS)}")
        if init not in INITS:
            raise CharLMError(f"model.init={init!r} is not one of {list(INITS)}")
        if min(vocab_size, hidden_size, num_layers) < 1:
            raise CharLMError(
                f"vocab_size, hidden_size and num_layers must be >= 1, got {vocab_size}, {hidden_size}, {num_layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise CharLMError(f"model.dropout={dropout} must be in [0, 1)")
        embedding_dim = int(embedding_dim or hidden_size)
        if tie_weights and embedding_dim != hidden_size:
            raise CharLMError(
                f"model.tie_weights needs embedding_dim == hidden_size, got {embedding_dim} and {hidden_size}"
            )
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.cell = cell
        self.embedding_dim = embedding_dim
        self.dropout = float(dropout)
        self.tie_weights = bool(tie_weights)
        self.init = init

        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        # nn.LSTM's own dropout acts between layers only (and warns with one layer).
        self.rnn = CELLS[cell](
            embedding_dim, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        if init == "charrnn":
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
        """Constructor arguments as plain types (stored in checkpoints)."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "cell": self.cell,
            "embedding_dim": self.embedding_dim,
            "dropout": self.dropout,
            "tie_weights": self.tie_weights,
            "init": self.init,
        }

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
        emb = self.embedding(ids)  # [B, T, E]
        if state is None:
            out, new = self.rnn(emb)
        else:
            out, new = self.rnn(emb, state if self.cell == "lstm" else state[0])
        new_state: State = tuple(new) if self.cell == "lstm" else (new,)
        logits = self.decoder(self.drop(out))  # [B, T, V]
        return logits, new_state

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


def nats_to_bits(loss: float | torch.Tensor):
    """Convert a cross-entropy from nats to bits (divide by ln 2)."""
    return loss / math.log(2)
