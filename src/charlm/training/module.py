"""The training step: :class:`CharLM`, a LightningModule around :class:`~charlm.model.rnn.CharRNN`.

Truncated BPTT as in char-rnn: the hidden state of every stream is carried from one training
window to the next and detached between steps (``repackage_hidden``); it is reset at the start
of every epoch. Validation and test carry their own state over the whole split, each stream
starting from its burn-in (:func:`charlm.evaluation.evaluate.burn_in_state`), as ``charlm-eval`` does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from charlm.checkpoint import MODEL_ENTRY, model_entry, saved_hidden, saved_rng
from charlm.data.streams import IGNORE_INDEX
from charlm.errors import CharLMError
from charlm.evaluation.evaluate import burn_in_state
from charlm.evaluation.metrics import CharNLL
from charlm.model.rnn import CharRNN, State
from charlm.model.run_state import gather_hidden, gather_rng_states, local_hidden, restore_rng_states
from charlm.units import loss_to_metrics

log = logging.getLogger(__name__)


class CharLM(L.LightningModule):
    """Character language model with truncated BPTT, for ``lightning.Trainer``.

    Args:
        vocab: the sorted vocabulary characters (stored in every checkpoint).
        model: :class:`CharRNN` keyword arguments (``hidden_size``, ``num_layers``, ``cell``, ...);
            ``vocab_size`` is taken from ``vocab``.
        optimizer: a factory ``params -> torch.optim.Optimizer`` (Hydra ``_partial_``); AdamW
            with lr 2e-3 when ``None``.
        scheduler: a factory ``(optimizer, total_steps) -> lr_scheduler dict or None`` (see
            :mod:`charlm.training.schedulers`); ``total_steps`` is the Trainer's
            ``estimated_stepping_batches``, ``None`` when only ``trainer.max_time`` bounds the run.
            A ``ReduceLROnPlateau`` is stepped once per validation with that validation's value
            of its ``monitor``, never on Lightning's step or epoch clock.
        data: plain-typed description of the training data (stored in checkpoints).
        nonfinite: what a non-finite training loss or gradient norm does: ``"stop"`` (raise,
            naming the step; no checkpoint with NaN weights is written) or ``"skip"`` (skip that
            optimizer step). With fp16 loss scaling the GradScaler's own skipping is left alone.

    Batches are ``(x, y)`` int64 ``[B, T]``; the loss is the mean cross-entropy in nats/char.
    Logged: ``train/loss``, ``train/grad_norm``, ``train/tokens_per_sec``, ``val/loss``
    (nats/char, token-weighted), ``val/bpc``, ``val/ppl`` (and ``test/*``).
    """

    def __init__(
        self,
        vocab: list[str],
        model: dict[str, Any] | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        data: dict[str, Any] | None = None,
        nonfinite: str = "stop",
    ):
        super().__init__()
        if nonfinite not in ("stop", "skip"):
            raise CharLMError(f"nonfinite={nonfinite!r} must be 'stop' or 'skip'")
        self.vocab = list(vocab)
        model_cfg = dict(model or {})
        model_cfg.pop("vocab_size", None)
        self.net = CharRNN(vocab_size=len(self.vocab), **model_cfg)
        self.data_config = dict(data or {})
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.nonfinite = nonfinite
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {"vocab": self.vocab, "model": self.net.config(), "data": self.data_config, "nonfinite": nonfinite},
            logger=False,
        )
        self.val_nll = CharNLL()
        self.test_nll = CharNLL()
        #: the hidden state carried from one training window to the next (``None``: zeros)
        self.hidden: State | None = None
        self._resumed_hidden: dict[str, Any] | None = None  # global hidden state from a checkpoint
        self.eval_hidden: State | None = None  # validation/test: carried over the whole split
        self._tokens = 0
        self._t_last: float | None = None
        self._last_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------ forward
    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``ids`` int64 ``[B, T]`` -> ``(logits [B, T, V], state)``; see :meth:`CharRNN.forward`."""
        return self.net(ids, state)

    def _nll(self, batch, state: State | None, reduction: str):
        x, y = batch
        logits, state = self.net(x, state)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction=reduction, ignore_index=IGNORE_INDEX
        )
        return loss, state

    # ------------------------------------------------------------------ training
    def _train_loader(self):
        trainer = self._trainer
        loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        return loader if hasattr(loader, "mark_trained") else None

    def on_train_epoch_start(self) -> None:
        if self._train_loader() is None:
            self.hidden = None  # every stream starts the epoch from a zero state

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loader = self._train_loader()
        if loader is not None and loader.next_trained_index() == 0:
            # The loader's own position decides (not Lightning's epoch counter, which can move
            # on a restart): every stream starts the data epoch from a zero state.
            self.hidden = None
            self._resumed_hidden = None
        if self._resumed_hidden is not None:
            self.hidden = self._take_resumed_hidden()
        if loader is not None:
            # this batch counts as trained for checkpoints written after this step (callbacks'
            # on_train_batch_end runs before the module's, so it cannot be marked there)
            loader.mark_trained()
        loss, state = self._nll(batch, self.hidden, "mean")
        self.hidden = tuple(s.detach() for s in state)
        self._last_loss = loss.detach()  # checked with the gradient norm: one host sync per step
        self._tokens += batch[0].numel()
        # sync_dist: under DDP the mean over all ranks' streams (equal token counts per rank)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = max(int(getattr(self.trainer, "log_every_n_steps", 50) or 50), 1)
        if self.trainer.global_step % every:
            return
        now = time.perf_counter()
        if self._t_last is not None and now > self._t_last:
            tps = self._tokens * self.trainer.world_size / (now - self._t_last)
            self.log("train/tokens_per_sec", tps, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t_last, self._tokens = now, 0

    def on_validation_start(self) -> None:
        self._t_last = None  # validation time is not training throughput

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as the Trainer's ``gradient_clip_val``/``gradient_clip_algorithm`` say, log the
        pre-clipping gradient norm, and stop or skip on a non-finite loss or gradient norm (one
        check per step, here: a non-finite loss makes the norm non-finite too)."""
        params = [p for p in self.parameters() if p.grad is not None]
        if not params:
            return
        max_norm = float(gradient_clip_val) if gradient_clip_val and gradient_clip_algorithm in (None, "norm") else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if gradient_clip_val and gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val), foreach=True)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if torch.isfinite(norm):  # the only host sync of the step: a NaN/Inf loss gives a NaN norm too
            return
        step = self.trainer.global_step
        loss = self._last_loss
        local_bad = loss is not None and not bool(torch.isfinite(loss))
        bad_loss = local_bad
        if self.trainer.world_size > 1:
            # All ranks decide together (the norm is of the all-reduced gradients, so every rank
            # is here): if any rank's loss is non-finite, every rank resets its hidden state, as
            # one process holding all the streams would; otherwise the ranks would disagree on
            # having a state and the next checkpoint's gather would fail (gloo) or hang (NCCL).
            bad_loss = bool(self.trainer.strategy.reduce_boolean_decision(local_bad, all=False))
        if not bad_loss and getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling: the GradScaler skips this step and lowers its scale
        if local_bad:
            what, value = "training loss", loss
        elif bad_loss:
            what, value = "training loss on another rank, gradient norm", norm
        else:
            what, value = "gradient norm", norm
        if self.nonfinite == "skip":
            log.warning("step %d: non-finite %s (%s); skipping this optimizer step", step, what, value.item())
            for p in params:
                p.grad = None  # torch optimizers leave parameters without a gradient untouched
            if bad_loss:
                self.hidden = None  # do not carry a NaN/Inf hidden state into the next window
            return
        raise CharLMError(
            f"non-finite {what} ({value.item()}) at step {step}: training stopped and no checkpoint "
            "with these values was written; the last good checkpoint is kept. Lower optimizer.lr, keep gradient "
            "clipping on (trainer.gradient_clip_val), resume from the last checkpoint, or set nonfinite=skip to "
            "skip such steps."
        )

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(self.parameters(), lr=2e-3)
        else:
            optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total: int | None = 1
        if self._trainer is not None:
            # inf when only trainer.max_time bounds the run: a schedule that needs the run's length says so
            est = self.trainer.estimated_stepping_batches
            total = int(est) if math.isfinite(est) else None
        sched = self.scheduler_factory(optimizer, total_steps=total)
        if sched is None:
            return optimizer
        if isinstance(sched.get("scheduler"), ReduceLROnPlateau):
            # Stepped by on_validation_epoch_end, once per validation with that validation's value
            # (Lightning would step it on the epoch or step clock with a possibly stale value).
            sched = {**sched, "reduce_on_plateau": False}
        return {"optimizer": optimizer, "lr_scheduler": sched}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Lightning's per-step/per-epoch scheduler call; schedules driven by a validation metric
        (``ReduceLROnPlateau``) are left to :meth:`_step_validation_schedulers`."""
        if isinstance(scheduler, ReduceLROnPlateau):
            return
        super().lr_scheduler_step(scheduler, metric)

    def _step_validation_schedulers(self, values: dict[str, float]) -> None:
        """Step every ``ReduceLROnPlateau`` once, with this validation's value of its ``monitor``
        (``values``: ``{"val/loss": nats/char, ...}``). Runs before the checkpoint callbacks'
        ``on_validation_end``, so a checkpoint written at a validation holds the stepped scheduler
        and a resumed run follows the same learning-rate curve."""
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, ReduceLROnPlateau):
                monitor = config.monitor or "val/loss"
                value = values.get(monitor, trainer.callback_metrics.get(monitor))
                if value is None:
                    raise CharLMError(
                        f"the plateau schedule monitors {monitor!r}, which validation does not log; "
                        f"use one of {sorted(values)}"
                    )
                config.scheduler.step(float(value))

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch, metric: CharNLL) -> None:
        nll, self.eval_hidden = self._nll(batch, self.eval_hidden, "sum")
        metric.update(nll, (batch[1] != IGNORE_INDEX).sum())

    def _eval_end(self, metric: CharNLL, prefix: str) -> dict[str, float]:
        loss = metric.compute()
        metric.reset()
        values = loss_to_metrics(float(loss))
        for k, v in values.items():
            self.log(f"{prefix}/{k}", v, sync_dist=False, prog_bar=(k == "loss"), rank_zero_only=False)
        return values

    def on_validation_epoch_start(self) -> None:
        # every stream starts from its burn-in (the text before its segment), not from zeros
        self.eval_hidden = burn_in_state(self.net, self.trainer.val_dataloaders)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_nll)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_nll.reset()
            return
        values = self._eval_end(self.val_nll, "val")
        self._step_validation_schedulers({f"val/{k}": v for k, v in values.items()})

    def on_test_epoch_start(self) -> None:
        self.eval_hidden = burn_in_state(self.net, self.trainer.test_dataloaders)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_nll)

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.test_nll, "test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what sampling and exact resumption need, as plain types and tensors.

        Raises:
            CharLMError: if a parameter is NaN or infinite (such a checkpoint is never written).
        """
        bad = [n for n, p in self.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise CharLMError(
                f"refusing to write a checkpoint at step {self.global_step}: parameters {bad[:3]} hold NaN/Inf; "
                "the last good checkpoint is kept."
            )
        checkpoint[MODEL_ENTRY] = model_entry(
            vocab=self.vocab,
            model=self.net.config(),
            data=self.data_config,
            hidden=gather_hidden(self, self.hidden),  # every stream of every rank, in global order
            rng=gather_rng_states(self),
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        entry = checkpoint.get(MODEL_ENTRY) or {}
        hidden = saved_hidden(entry)
        # sliced to this rank's streams at the first training step (the rank is known by then)
        self._resumed_hidden = {"hidden": hidden} if hidden is not None else None
        self.hidden = None
        restore_rng_states(self, saved_rng(entry))

    def _take_resumed_hidden(self) -> State | None:
        pending, self._resumed_hidden = self._resumed_hidden, None
        assert pending is not None
        return local_hidden(self, pending["hidden"])
