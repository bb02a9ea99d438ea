"""Contiguous BPTT streams: the layout of char-rnn and PyTorch's word_language_model example.

A split of ``N`` ids is cut into ``G`` contiguous streams of length ``L`` (``batchify``); batch
``i`` is window ``i`` of every stream (``get_batch``)::

    streams: [G, L]            (stream g starts at id g * L)
    x_i = streams[:, i*T : (i+1)*T]          int64 [B, T]
    y_i = streams[:, i*T+1 : (i+1)*T+1]      int64 [B, T]   (x shifted by one character)

Consecutive batches continue every stream and nothing is shuffled, so the model's hidden state
carries over from batch ``i`` to ``i+1`` (the training step detaches it between steps:
:class:`~charlm.training.module.CharLM`).

Rank-aware: with ``world_size`` processes there are ``G = world_size * batch_size`` global
streams and rank ``r`` owns streams ``r*B .. (r+1)*B - 1``, so the global batch is
``world_size * batch_size`` streams and every character is seen once per epoch.

Evaluation (``cover_all=True``) scores every character of a split once, whatever ``G``. So that
the score does not depend on ``G`` either, each stream first reads the ``burn_in`` characters
just before its segment without scoring them (:meth:`BPTTLoader.burn_in_batch`; the first
stream reads the text that precedes the split, ``context``, when there is one): a stream then
starts from the state a single pass over the text would have there, not from zeros.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from charlm.errors import CharLMError

#: Target value of padded positions (cross-entropy's default ``ignore_index``).
IGNORE_INDEX = -100

#: Default burn-in of evaluation streams, in characters (``data.eval_burn_in``, ``charlm-eval
#: burn_in=``). Measured on the default run's model (BENCHMARKS.md, "Evaluation streams and
#: burn-in"): 1 to 1,024 streams give the single pass's val loss to 3e-5 nats with 64
#: characters and to 5e-6 with 128 (without any, 512 streams are 0.030 nats/char worse); 128
#: keeps a factor-2 margin for models with a longer memory.
EVAL_BURN_IN = 128

#: The splits of a corpus, in order: contiguous ranges of its ids.
SPLITS = ("train", "val", "test")
#: The ``(train, val, test)`` fractions of ``data.splits`` by default (conf/_data.yaml), also assumed
#: for a checkpoint that does not record its own.
DEFAULT_SPLITS = (0.9, 0.05, 0.05)


def split_bounds(num_chars: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """Contiguous ``(start, end)`` id ranges of the train/val/test splits.

    Args:
        num_chars: corpus length in characters.
        fractions: ``(train, val, test)`` fractions, each in ``[0, 1]``, summing to 1
            (e.g. ``(0.9, 0.05, 0.05)``; nanoGPT's Tiny Shakespeare split is ``(0.9, 0.1, 0)``).

    Returns:
        three ``(start, end)`` pairs; a split with fraction 0 is the empty range ``(n, n)``.

    Raises:
        CharLMError: if the fractions are invalid or an enabled split rounds to 0 characters.
    """
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(not (0.0 <= f <= 1.0) for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise CharLMError(
            f"data.splits must be three fractions (train, val, test) in [0, 1] summing to 1, got {list(fractions)}"
        )
    if fr[0] == 0:
        raise CharLMError("data.splits: the train fraction must be > 0")
    n_val = int(round(num_chars * fr[1]))
    n_test = int(round(num_chars * fr[2]))
    n_train = num_chars - n_val - n_test
    for name, f, n in (("train", fr[0], n_train), ("val", fr[1], n_val), ("test", fr[2], n_test)):
        if f > 0 and n <= 1:
            raise CharLMError(
                f"the {name} split is {f} of a {num_chars:,}-character corpus, which leaves {n} character(s); "
                f"use a larger corpus or a larger {name} fraction in data.splits (or 0 to disable it)."
            )
    return [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, num_chars)]


def split_of(ids: np.ndarray, fractions: Sequence[float], split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of a corpus's ids, and the ids before it: ``(ids[b:e], ids[:b])`` for the
    ``(b, e)`` of ``split`` in :func:`split_bounds` (slices: a memory map stays one). The text
    before a split is what its first evaluation stream reads as burn-in (empty for train).

    Args:
        ids: int ``[N]`` the whole corpus's ids.
        fractions: the ``(train, val, test)`` fractions (``data.splits``).
        split: one of :data:`SPLITS`.

    Raises:
        CharLMError: if the fractions are invalid (see :func:`split_bounds`).
        ValueError: if ``split`` is not one of :data:`SPLITS` (callers check the option first).
    """
    b, e = split_bounds(len(ids), fractions)[SPLITS.index(split)]
    return ids[b:e], ids[:b]


class BPTTLoader:
    """Iterable of contiguous BPTT windows ``(x, y)``, both int64 ``[B, T]``, over one split.

    Args:
        ids: ``[N]`` ids of the split (any unsigned dtype; a memory map is read lazily).
        batch_size: streams per rank ``B``.
        seq_len: window length ``T`` (BPTT steps).
        rank: this process's rank; it owns streams ``rank*B .. (rank+1)*B - 1``.
        world_size: number of processes; global streams ``G = world_size * B``.
        cover_all: ``False`` (training): streams of ``L = (N-1) // G`` characters and only full
            windows (``L // T`` batches; the tail is dropped). ``True`` (evaluation): every one of
            the ``N - 1`` targets is predicted exactly once; streams have ``ceil((N-1) / G)``
            characters, the last window may be shorter, and targets past the end of the split
            are ``IGNORE_INDEX`` (-100), so a token-weighted loss covers the whole split.
        burn_in: evaluation only (``cover_all``): characters each stream reads, unscored, before
            its segment (:meth:`burn_in_batch`); 0 starts every stream from a zero state.
        context: ``[M]`` ids of the text just before the split (e.g. the train split before
            val), read by the first stream(s) as their burn-in; ``None`` or empty when nothing
            precedes it (then the first stream starts from a zero state, as a single pass does).
        name: split name, for error messages.

    Raises:
        CharLMError: if the split is too small for one window of every stream, or ``burn_in``
            is negative or set for training.

    The loader is resumable: :meth:`state_dict` gives the epoch and the number of batches
    consumed, and :meth:`load_state_dict` makes the next iteration continue from there.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        cover_all: bool = False,
        burn_in: int = 0,
        context: np.ndarray | None = None,
        name: str = "train",
    ):
        if batch_size < 1 or seq_len < 1:
            raise CharLMError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if int(burn_in) < 0 or (burn_in and not cover_all):
            raise CharLMError(f"burn_in={burn_in} must be >= 0, and is for evaluation streams only (cover_all=True)")
        if not 0 <= rank < world_size:
            raise CharLMError(f"rank {rank} is not in [0, {world_size})")
        self.ids = ids
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.cover_all = bool(cover_all)
        self.burn_in = int(burn_in)
        self.context = context if context is not None and int(context.shape[0]) > 0 else None
        self.name = name
        n = int(ids.shape[0])
        g = self.num_streams
        need = g * (self.seq_len + 1) if not cover_all else g + 1
        if n < need:
            raise CharLMError(
                f"the {name} split has {n:,} characters, fewer than one batch needs: "
                f"{g} stream(s) (batch_size={self.batch_size} x {self.world_size} device(s)) "
                + (f"x (seq_len={self.seq_len} + 1) = {need:,}. " if not cover_all else f"+ 1 = {need:,}. ")
                + (
                    "Lower data.batch_size or data.seq_len, use a larger corpus, "
                    f"or give the {name} split a larger fraction in data.splits."
                    if not cover_all  # an evaluated split needs one character per stream, whatever seq_len
                    else f"Give the {name} split a larger fraction in data.splits, or use a larger corpus."
                )
            )
        if cover_all:
            self.stream_len = math.ceil((n - 1) / g)
            self.num_batches = math.ceil(self.stream_len / self.seq_len)
        else:
            self.stream_len = (n - 1) // g
            self.num_batches = self.stream_len // self.seq_len
        # global start of each of this rank's streams
        first = self.rank * self.batch_size
        self._starts = (np.arange(first, first + self.batch_size, dtype=np.int64) * self.stream_len)[:, None]
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch trained on (see mark_trained)
        self._resume_at: int | None = None
        # indices handed out but not yet reported trained: Lightning fetches one batch ahead,
        # so "handed out" runs ahead of "trained" and only mark_trained() moves `consumed`.
        self._pending: collections.deque[int] = collections.deque()

    @property
    def num_streams(self) -> int:
        """Global number of streams ``G = world_size * batch_size``."""
        return self.batch_size * self.world_size

    @property
    def num_targets(self) -> int:
        """Characters predicted per epoch by all ranks together."""
        if self.cover_all:
            return int(self.ids.shape[0]) - 1
        return self.num_streams * self.num_batches * self.seq_len

    def __len__(self) -> int:
        return self.num_batches

    def burn_in_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What this rank's streams read, unscored, before their first window.

        Stream ``g`` (global index; its segment starts at split position ``s = g * L``) reads
        the ``a = min(burn_in, M + s)`` characters just before ``s``: from the split itself, and
        for the first stream(s) from ``context`` (``M`` characters), the text before the split.
        A stream with ``a = 0`` (the first stream of a text with nothing before it) starts
        from a zero state, exactly as one pass over the text does.

        Returns:
            ``None`` when no stream has anything to read (``burn_in == 0``, or one stream and
            no context), else ``(x, start)``: ``x`` int64 ``[B, P]`` with ``P`` the longest
            ``a`` of this rank's streams, each row right-aligned (row ``b`` holds its ``a_b``
            characters in columns ``P - a_b .. P - 1``; the columns before are filler), and
            ``start`` int64 ``[B]`` = ``P - a_b``, the column where the stream's text begins;
            the state of row ``b`` must be zero at column ``start[b]`` (see
            :func:`charlm.evaluation.evaluate.burn_in_state`).
        """
        if not self.burn_in:
            return None
        m = int(self.context.shape[0]) if self.context is not None else 0
        s = self._starts[:, 0]  # [B] split positions where this rank's streams start
        avail = np.minimum(self.burn_in, m + s)  # [B]
        p = int(avail.max())
        if p == 0:
            return None
        start = p - avail
        col = np.arange(p, dtype=np.int64)[None, :]
        pos = s[:, None] - p + col  # [B, P] split positions; < 0: in the context
        pos[col < start[:, None]] = 0  # filler (before the state is zeroed): any valid id
        n = int(self.ids.shape[0])
        x = np.empty(pos.shape, dtype=np.int64)
        inside = pos >= 0
        x[inside] = np.asarray(self.ids[np.minimum(pos[inside], n - 1)], dtype=np.int64)
        if not inside.all():
            assert self.context is not None
            x[~inside] = np.asarray(self.context[pos[~inside] + m], dtype=np.int64)
        return torch.from_numpy(x), torch.from_numpy(start.astype(np.int64))

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``i`` of this rank's streams: ``x, y`` int64 ``[B, T_i]`` (``T_i = T`` except
        possibly the last window with ``cover_all``); padded targets are ``IGNORE_INDEX``."""
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} out of range [0, {self.num_batches})")
        t0 = i * self.seq_len
        t = min(self.seq_len, self.stream_len - t0)
        pos = self._starts + np.arange(t0, t0 + t + 1, dtype=np.int64)[None, :]  # [B, t+1] global positions
        n = int(self.ids.shape[0])
        inside = pos < n  # always true when training (cover_all=False)
        xy = torch.from_numpy(np.asarray(self.ids[np.minimum(pos, n - 1)], dtype=np.int64))
        x = xy[:, :-1].contiguous()
        y = xy[:, 1:].contiguous()
        if self.cover_all and not inside.all():
            y[~torch.from_numpy(inside[:, 1:])] = IGNORE_INDEX
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._resume_at if self._resume_at is not None else 0
        self._resume_at = None
        self.consumed = start
        self._pending.clear()
        for i in range(start, self.num_batches):
            self._pending.append(i)
            yield self.batch(i)

    def next_trained_index(self) -> int | None:
        """Index (in the epoch) of the oldest batch handed out and not yet marked trained: the
        batch the training step is working on (``None`` when nothing is outstanding)."""
        return self._pending[0] if self._pending else None

    def mark_trained(self) -> int:
        """Record that the oldest outstanding batch was trained on; returns its index.

        The training loop calls this once per optimizer step (``CharLM.training_step``),
        so :meth:`state_dict` gives the position after the last *trained* batch however far
        ahead the loader has been read. Training the last batch of the split completes an
        epoch: ``epoch`` goes up by one and ``consumed`` back to 0 (counted here, not when an
        iterator is exhausted: Lightning stops after ``len(loader)`` batches without exhausting it).
        """
        i = self._pending.popleft() if self._pending else self.consumed
        self.consumed = i + 1
        if self.consumed >= self.num_batches:
            self.epoch += 1
            self.consumed = 0
        return i

    def state_dict(self) -> dict:
        """Position in the split: ``{"epoch", "consumed", "num_streams", "stream_len", "seq_len"}``;
        ``epoch`` counts the data epochs completed and ``consumed`` the batches of the current
        epoch marked trained (:meth:`mark_trained`)."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "num_streams": self.num_streams,
            "stream_len": self.stream_len,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the next iteration at batch ``state["consumed"]`` of epoch ``state["epoch"]``.

        Raises:
            CharLMError: if the saved layout (streams, stream length, seq_len) differs from this one.
        """
        layout = ("num_streams", "stream_len", "seq_len")
        saved = {k: state.get(k) for k in layout}
        mine = {k: getattr(self, k) for k in layout}
        if saved != mine:
            raise CharLMError(
                f"cannot resume the {self.name} loader: the checkpoint's stream layout {saved} "
                f"differs from this run's {mine} (batch_size, devices, seq_len or corpus changed)."
            )
        self.epoch = int(state["epoch"])
        self._resume_at = int(state["consumed"]) % max(self.num_batches, 1)
