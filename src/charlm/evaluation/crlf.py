"""A loss rescaled to a count where every newline is two characters (``\\r\\n``).

Karpathy, Johnson & Fei-Fei (2015) scored War and Peace as a CRLF file, byte by byte: each line
break was two characters, ``\\r`` (as hard to predict as our ``\\n``) and then ``\\n`` (almost
free after ``\\r``). charlm normalises line endings to ``\\n``, so its loss is per fewer, harder
characters. To compare, the total nats are divided by the characters the paper would have counted,
``chars + newlines``. This treats the paper's second character of each line break as free; the
nats it really cost (a little above 0) are not added, so the figure is a slight lower bound of
the CRLF model's loss.
"""

from __future__ import annotations

import numpy as np

from charlm.data.vocab import Vocab
from charlm.units import nats_to_bits


def count_newlines(ids: np.ndarray, vocab: Vocab) -> int:
    """Number of ``\\n`` in ``ids`` (int ``[N]`` in ``vocab``'s ids; 0 when the vocabulary has none)."""
    if "\n" not in vocab:
        return 0
    return int(np.count_nonzero(np.asarray(ids) == vocab.stoi["\n"]))


def crlf_loss(loss: float, chars: int, newlines: int) -> dict[str, float]:
    """The loss per character of the CRLF count.

    Args:
        loss: mean loss in nats/char over ``chars`` scored characters.
        chars: characters scored (after newline normalisation).
        newlines: ``\\n`` among those scored characters.

    Returns:
        ``{"loss": total nats / (chars + newlines) in nats/char, "bpc": the same in bits/char,
        "chars": chars + newlines}``.
    """
    total = float(loss) * int(chars)
    n = int(chars) + int(newlines)
    out = total / max(n, 1)
    return {"loss": out, "bpc": nats_to_bits(out), "chars": n}
