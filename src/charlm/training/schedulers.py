"""Learning-rate schedules, built from config with ``_partial_: true``.

Each factory takes ``(optimizer, total_steps, **options)`` and returns a
Lightning ``lr_scheduler`` config dict named ``lr`` (so ``LearningRateMonitor`` logs the
rate as ``lr``); the LightningModule
fills in ``total_steps`` (the Trainer's ``estimated_stepping_batches``, or ``None`` when the run
has no step bound, only ``trainer.max_time``). A schedule that needs the run's length raises
:class:`~charlm.errors.CharLMError` without one. ``ReduceLROnPlateau`` schedules are stepped by the
LightningModule once per validation, with that validation's value.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from charlm.errors import CharLMError


def _horizon(name: str, total_steps: int | None) -> int:
    """``total_steps`` as a positive int; ``name`` is the scheduler option named in the error.

    Raises:
        CharLMError: when the run has no step bound (``total_steps`` is ``None``).
    """
    if total_steps is None:
        raise CharLMError(
            f"scheduler={name} decays over the run's length, but this run has no step bound (trainer.max_steps=-1 "
            "and trainer.max_epochs=-1; only trainer.max_time): set trainer.max_steps or trainer.max_epochs, or use "
            "a schedule without a horizon (scheduler=none, plateau or charrnn)"
        )
    return max(int(total_steps), 1)


def warmup_cosine(optimizer, total_steps: int | None, warmup_steps: int = 100, min_lr_ratio: float = 0.1):
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at
    ``total_steps`` (nanoGPT's schedule, stepped every optimizer step).

    Raises:
        CharLMError: if ``total_steps`` is ``None`` (a run bounded only by ``trainer.max_time``).
    """
    total = _horizon("cosine", total_steps)
    warm = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step", "frequency": 1, "name": "lr"}


def charrnn_decay(optimizer, total_steps: int | None, decay_rate: float = 0.97, decay_after: int = 10):
    """char-rnn's schedule (``train.lua``): after each epoch from epoch ``decay_after`` on, the
    learning rate is multiplied by ``decay_rate`` (defaults 0.97 and 10, as there)."""

    def factor(epochs_done: int) -> float:
        return decay_rate ** max(0, epochs_done - decay_after + 1)

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "epoch", "frequency": 1, "name": "lr"}


def plateau(optimizer, total_steps: int | None, factor: float = 0.5, patience: int = 2, min_lr: float = 1e-6):
    """Multiply the learning rate by ``factor`` when ``val/loss`` has not improved for more than
    ``patience`` validations in a row (``torch.optim.lr_scheduler.ReduceLROnPlateau``, relative
    threshold 1e-4). The LightningModule steps it once per validation, with that validation's
    ``val/loss``; the learning rate does not change between validations."""
    sched = ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, min_lr=min_lr)
    return {"scheduler": sched, "interval": "epoch", "frequency": 1, "monitor": "val/loss", "strict": False, "name": "lr"}


def constant(optimizer: torch.optim.Optimizer, total_steps: int | None):
    """No schedule: the optimizer's learning rate throughout (a constant factor of 1, so the
    rate is still logged as ``lr``)."""
    return {"scheduler": LambdaLR(optimizer, lambda step: 1.0), "interval": "step", "frequency": 1, "name": "lr"}
