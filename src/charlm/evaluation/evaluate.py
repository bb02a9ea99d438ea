"""Loss, bits per character and perplexity of a model over a whole text, with carried state.

One implementation for validation during training (:class:`~charlm.training.module.CharLM`) and
``charlm-eval``: both read the text as :class:`~charlm.data.streams.BPTTLoader` evaluation
streams, and both start each stream from :func:`burn_in_state`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from charlm.data.cache import PreparedCorpus
from charlm.data.streams import EVAL_BURN_IN, IGNORE_INDEX, BPTTLoader
from charlm.data.vocab import Vocab, describe_chars
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN, State
from charlm.units import loss_to_metrics


def remap_ids(corpus: PreparedCorpus, vocab: Vocab) -> np.ndarray:
    """Lookup table from the corpus's own ids to ``vocab``'s ids (int64 ``[V_corpus]``).

    Raises:
        CharLMError: listing the corpus characters that are not in ``vocab``.
    """
    missing = [c for c in corpus.vocab.chars if c not in vocab]
    if missing:
        raise CharLMError(
            f"{corpus.source} has {len(missing)} character(s) that are not in the model's vocabulary: "
            f"{describe_chars(missing)}. Evaluate on text made of the model's characters only."
        )
    return np.array([vocab.stoi[c] for c in corpus.vocab.chars], dtype=np.int64)


@torch.no_grad()
def burn_in_state(net: CharRNN, loader: BPTTLoader, remap: torch.Tensor | None = None) -> State | None:
    """The state each of ``loader``'s streams starts from: the state after reading, unscored,
    the text just before its segment (:meth:`BPTTLoader.burn_in_batch`).

    The burn-in is read in windows of at most ``loader.seq_len`` characters (memory as for one
    evaluation window); a stream's state is set to zero where its text begins, so a stream with
    less to read than the others (the first stream of a text with nothing before it) gets exactly
    the state a single pass over the text has there. Call it with ``net`` in eval mode.

    Args:
        net: the model (its device is used).
        loader: an evaluation loader (``cover_all=True``); any other iterable has no burn-in.
        remap: optional lookup table (int64 ``[V_corpus]`` on ``net``'s device) applied to the ids.

    Returns:
        ``None`` (start from zeros: no burn-in) or the state, tuple of float
        ``[num_layers, B, hidden_size]`` on ``net``'s device.
    """
    batch = loader.burn_in_batch() if hasattr(loader, "burn_in_batch") else None
    if batch is None:
        return None
    device = next(net.parameters()).device
    x, start = batch
    x = x.to(device)
    if remap is not None:
        x = remap[x]
    p = int(x.shape[1])
    starts = start.tolist()
    cuts = sorted({*range(0, p, loader.seq_len), *starts, p})
    start = start.to(device).view(1, -1, 1)
    state: State | None = None
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if state is not None and lo in starts:  # these streams' text begins here: from a zero state
            state = tuple(torch.where(start == lo, torch.zeros_like(s), s) for s in state)
        _, state = net(x[:, lo:hi], state)
    assert state is not None
    if p in starts:  # streams with nothing to read
        state = tuple(torch.where(start == p, torch.zeros_like(s), s) for s in state)
    return state


@torch.inference_mode()
def evaluate(
    net: CharRNN,
    ids: np.ndarray,
    batch_size: int = 32,
    seq_len: int = 256,
    remap: np.ndarray | None = None,
    burn_in: int = EVAL_BURN_IN,
    context: np.ndarray | None = None,
) -> dict[str, float]:
    """Token-weighted cross-entropy of ``net`` on ``ids``, every character predicted once.

    The text is cut into ``batch_size`` contiguous streams (``BPTTLoader(cover_all=True)``) read
    window by window with the state carried, so memory is bounded by one window whatever the
    text's length. Each stream first reads the ``burn_in`` characters before its segment
    unscored (:func:`burn_in_state`), so the result is that of one pass over the whole text
    (``batch_size=1``) to within 1e-3 nats for a trained model with the default ``burn_in``
    (BENCHMARKS.md, "Evaluation streams and burn-in"); the first character of ``ids`` is read,
    never predicted.

    Args:
        net: the model (its device is used).
        ids: ``[N]`` ids (a memory map is fine).
        batch_size: streams read in parallel (at most ``(N - 1) // 2``).
        seq_len: characters per window.
        remap: optional lookup table applied to ``ids`` and ``context`` (corpus ids -> model ids).
        burn_in: characters each stream reads before its segment (0: every stream from zeros).
        context: ``[M]`` ids of the text before ``ids`` (e.g. the train split before val),
            read by the first stream as its burn-in; ``None`` when nothing precedes it.

    Returns:
        ``{"loss": nats/char, "bpc": bits/char, "ppl": perplexity, "chars": characters scored,
        "streams": streams used, "burn_in": burn-in in characters}``.

    Raises:
        CharLMError: if ``ids`` has fewer than 2 characters (nothing to predict) or ``burn_in``
            is negative.
    """
    n = int(ids.shape[0])
    if n < 2:
        raise CharLMError(
            f"the text to evaluate has {n} character(s); evaluation needs at least 2 characters "
            "(the first is read, each later one is predicted)"
        )
    device = next(net.parameters()).device
    batch_size = max(1, min(int(batch_size), (int(ids.shape[0]) - 1) // 2 or 1))
    loader = BPTTLoader(
        ids, batch_size, seq_len, cover_all=True, burn_in=burn_in, context=context, name="evaluation"
    )
    lut = torch.from_numpy(remap).to(device) if remap is not None else None
    was_training = net.training
    net.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        state = burn_in_state(net, loader, lut)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if lut is not None:
                x = lut[x]
                y = torch.where(y == IGNORE_INDEX, y, lut[y.clamp(min=0)])
            logits, state = net(x, state)
            total += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum", ignore_index=IGNORE_INDEX
            ).double()
            count += int((y != IGNORE_INDEX).sum())
    finally:
        net.train(was_training)
    out = loss_to_metrics(float(total) / max(count, 1))
    out["chars"] = count
    out["streams"] = batch_size
    out["burn_in"] = int(burn_in)
    return out
