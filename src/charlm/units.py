"""Loss units: cross-entropy in nats per character, bits per character and perplexity.

Pure arithmetic (no torch), below every layer that reports a loss: the n-gram baseline, the
evaluation, the training step and the visualiser.
"""

from __future__ import annotations

import math

LN2 = math.log(2)


def nats_to_bits(loss_nats):
    """A cross-entropy in bits from one in nats (divided by ln 2): bits per character from
    nats per character. Works on a float, a numpy array or a tensor."""
    return loss_nats / LN2


def loss_to_metrics(loss_nats: float) -> dict[str, float]:
    """``{"loss": nats/char, "bpc": bits/char, "ppl": perplexity}`` from a loss in nats/char."""
    loss_nats = float(loss_nats)
    return {"loss": loss_nats, "bpc": nats_to_bits(loss_nats), "ppl": math.exp(min(loss_nats, 700.0))}
