"""Evaluation: token-weighted loss (nats/char), bits per character and perplexity."""

from charlm.evaluation.crlf import count_newlines, crlf_loss
from charlm.evaluation.evaluate import evaluate, remap_ids
from charlm.evaluation.metrics import CharNLL, loss_to_metrics

__all__ = ["CharNLL", "count_newlines", "crlf_loss", "evaluate", "loss_to_metrics", "remap_ids"]
