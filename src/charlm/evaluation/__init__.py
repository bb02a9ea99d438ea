"""Evaluation: token-weighted loss (nats/char), bits per character and perplexity; the report
that compares runs.

- :mod:`charlm.evaluation.metrics`  nats -> bits, perplexity; the token-weighted torchmetrics metric
- :mod:`charlm.evaluation.evaluate` a checkpoint's loss over a whole text, state carried
- :mod:`charlm.evaluation.crlf`     a loss with every newline counted as ``\\r\\n``
- :mod:`charlm.evaluation.report`   a table and plot of a sweep's jobs (``charlm-report``)

The names below are imported lazily (PEP 562 module ``__getattr__``), as in :mod:`charlm.data`:
the report reads files only and does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CharNLL": "charlm.evaluation.metrics",
    "count_newlines": "charlm.evaluation.crlf",
    "crlf_loss": "charlm.evaluation.crlf",
    "evaluate": "charlm.evaluation.evaluate",
    "loss_to_metrics": "charlm.evaluation.metrics",
    "nats_to_bits": "charlm.evaluation.metrics",
    "remap_ids": "charlm.evaluation.evaluate",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from charlm.evaluation.crlf import count_newlines, crlf_loss
    from charlm.evaluation.evaluate import evaluate, remap_ids
    from charlm.evaluation.metrics import CharNLL, loss_to_metrics, nats_to_bits


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
