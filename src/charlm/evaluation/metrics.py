"""The token-weighted character cross-entropy as a torchmetrics ``Metric`` (its units, nats ->
bits and perplexity: :mod:`charlm.units`).

The states are a float64 sum of nats and an integer count, reduced by ``sum`` across
processes, so ``val/loss`` under DDP equals the single-process value and stays finite whatever
the training precision (bf16 sums of ~1e5 losses would saturate).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class CharNLL(Metric):
    """Mean negative log-likelihood per character, in nats.

    ``update(nll_sum, count)`` takes the summed cross-entropy (nats, any float dtype) and the
    number of characters it covers; ``compute()`` returns ``nll_sum / count`` as float64.
    Bits per character are ``loss / ln 2`` and perplexity ``exp(loss)``
    (see :func:`charlm.units.loss_to_metrics`).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, count: torch.Tensor | int) -> None:
        self.nll_sum += nll_sum.detach().to(torch.float64)
        self.count += torch.as_tensor(count, device=self.count.device).to(torch.int64)

    def compute(self) -> torch.Tensor:
        return self.nll_sum / self.count.clamp(min=1)

