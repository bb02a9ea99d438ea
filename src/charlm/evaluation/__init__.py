"""Evaluation: token-weighted loss (nats/char), bits per character and perplexity."""

from charlm.evaluation.evaluate import evaluate, remap_ids
from charlm.evaluation.metrics import CharNLL, loss_to_metrics

__all__ = ["CharNLL", "evaluate", "loss_to_metrics", "remap_ids"]
