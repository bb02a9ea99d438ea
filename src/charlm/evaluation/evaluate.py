"""Loss, bits per character and perplexity of a model over a whole text, with carried state."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from charlm.data.corpus import PreparedCorpus
from charlm.data.streams import IGNORE_INDEX, BPTTLoader
from charlm.data.vocab import Vocab, describe_chars
from charlm.errors import CharLMError
from charlm.evaluation.metrics import loss_to_metrics
from charlm.model.rnn import CharRNN


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


@torch.inference_mode()
def evaluate(
    net: CharRNN,
    ids: np.ndarray,
    batch_size: int = 32,
    seq_len: int = 256,
    remap: np.ndarray | None = None,
) -> dict[str, float]:
    """Token-weighted cross-entropy of ``net`` on ``ids``, every character predicted once.

    The text is cut into ``batch_size`` contiguous streams (``BPTTLoader(cover_all=True)``) read
    window by window with the state carried, so memory is bounded by one window whatever the
    text's length, and the result equals one pass over the whole text up to the state reset at
    each stream start.

    Args:
        net: the model (its device is used).
        ids: ``[N]`` ids (a memory map is fine).
        batch_size: streams read in parallel.
        seq_len: characters per window.
        remap: optional lookup table applied to ``ids`` (corpus ids -> model ids).

    Returns:
        ``{"loss": nats/char, "bpc": bits/char, "ppl": perplexity, "chars": characters scored}``.

    Raises:
        CharLMError: if ``ids`` has fewer than 2 characters (nothing to predict).
    """
    n = int(ids.shape[0])
    if n < 2:
        raise CharLMError(
            f"the text to evaluate has {n} character(s); evaluation needs at least 2 characters "
            "(the first is read, each later one is predicted)"
        )
    device = next(net.parameters()).device
    batch_size = max(1, min(int(batch_size), (int(ids.shape[0]) - 1) // 2 or 1))
    loader = BPTTLoader(ids, batch_size, seq_len, cover_all=True, name="evaluation")
    lut = torch.from_numpy(remap).to(device) if remap is not None else None
    was_training = net.training
    net.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    state = None
    try:
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
    return out
