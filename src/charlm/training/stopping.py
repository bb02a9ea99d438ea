"""Stopping a training cleanly, and the one writer of ``last.ckpt`` that every stop saves with.

- :class:`LastCheckpoint`: writes ``last.ckpt`` every N steps, after the last step, when
  training ends, and when a stop asks for it (:meth:`LastCheckpoint.write_last`).
- :class:`GracefulStop`: ``stop_after_steps``, SIGINT/SIGTERM -> ``last.ckpt`` of the last
  completed step (through its :class:`LastCheckpoint`), then
  :class:`~charlm.errors.StopTraining` leaves ``Trainer.fit``; the same way at any moment.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from charlm.errors import StopTraining
from charlm.shell import command, shown_path

log = logging.getLogger(__name__)


class LastCheckpoint(ModelCheckpoint):
    """The one writer of ``last.ckpt``: the newest state of the run, from which ``resume=`` continues.

    ``last.ckpt`` is written (always through :meth:`write_last`):

    - every ``every_n_train_steps`` optimizer steps;
    - after the run's last step (``trainer.max_steps``), so a run extended later continues exactly;
    - when training ends otherwise (``max_epochs``, ``max_time``);
    - when a stop asks for it (:class:`GracefulStop`: ``stop_after_steps``, Ctrl-C, SIGTERM).

    A ``last.ckpt`` written at a step that is then validated is written again right after that
    validation, once the best-k files are saved (Lightning runs checkpoint callbacks after the
    others, in the order configured: ``model_checkpoint`` before ``last_checkpoint``). It then
    holds that validation's result and the best-k bookkeeping, so a run resumed from it neither
    validates that step again nor loses track of a best-k file (``save_top_k`` files stay
    ``save_top_k``). Writes are atomic (:class:`~charlm.checkpoint.AtomicCheckpointIO`).

    That rewrite keeps the loops' position written at the end of the step, so Lightning resumes it
    as it resumes any step-end checkpoint (a checkpoint taken during a validation at the last batch
    of an epoch would otherwise train a batch twice on resume). ``last.ckpt`` is replaced, never
    versioned as ``last-v1.ckpt`` (``enable_version_counter=False``).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 250, **kwargs):
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps, **kwargs)
        self._written_step: int | None = None  # optimizer step of the last last.ckpt this process wrote
        self._after_validation: int | None = None  # step whose last.ckpt is due when its validation ends
        self._writing = False  # a dump of ours (on_save_checkpoint runs for every callback's)
        self._step_end_loops: tuple[int, dict] | None = None  # (step, loops state written at its end)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self._writing = True
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self._writing = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not self._writing:
            return
        ours = self._step_end_loops
        if trainer.validating and ours is not None and ours[0] == trainer.global_step:
            checkpoint["loops"] = copy.deepcopy(ours[1])
        else:
            self._step_end_loops = (trainer.global_step, copy.deepcopy(checkpoint["loops"]))

    @property
    def last_path(self) -> Path:
        """Where ``last.ckpt`` is written."""
        return Path(self.dirpath or ".") / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def write_last(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` of the current optimizer step (``trainer.global_step``) now, or,
        while the step's validation is running, as soon as it ends. Does nothing when this step's
        ``last.ckpt`` is already written. A collective under DDP: every rank calls it at the same
        point (rank 0 writes)."""
        step = trainer.global_step
        if trainer.validating:
            self._after_validation = step
        elif self._written_step != step:
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run:  # debug=fdr writes no checkpoint (as Lightning's ModelCheckpoint)
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._written_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        every = self._every_n_train_steps
        final = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        if (every > 0 and step % every == 0) or final:
            self.write_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        step = trainer.global_step
        if step in (self._after_validation, self._written_step):
            self._after_validation = None
            self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0:
            self.write_last(trainer)


#: the signals that stop a run cleanly
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(L.Callback):
    """Stops training cleanly at an optimizer-step boundary, ``last.ckpt`` written.

    - ``stop_after_steps=N``: after ``N`` optimizer steps (the LR schedule still spans the
      configured run, so the stopped run is a prefix of the full one).
    - SIGINT (Ctrl-C) and SIGTERM (also what SLURM sends before a kill), at any moment: the step
      in progress finishes, ``last.ckpt`` of it is written, training stops. A second Ctrl-C
      aborts at once. Before the first optimizer step nothing is trained or written (there is
      nothing to resume); during a validation, the validation finishes first.

    One path for every stop: the decision is taken after a step (``on_train_batch_end``) or after
    a validation (``on_validation_end``, for a signal that came during it); ``last.ckpt`` is
    written by the run's :class:`LastCheckpoint` (:attr:`last_checkpoint`, :meth:`LastCheckpoint.write_last`:
    after the step's validation when the step is a validation step, as in a run never stopped);
    the next ``on_train_batch_start`` raises :class:`StopTraining`, so the stop step gets no
    validation, best-k file or sample that a run never stopped would not have. Under DDP the ranks
    decide together (any rank signalled) before the collective save.

    Signals: :meth:`catching_signals` installs charlm's handler for SIGINT and SIGTERM for the
    whole training (data preparation and logger set-up included). ``Trainer.fit`` adds
    Lightning's SIGTERM handler, which makes the loops raise ``SIGTERMException`` at their next
    boundary without a checkpoint (the window that lost runs: a SIGTERM after the end-of-step
    check and before the loop's own check left no ``last.ckpt``); from ``on_train_start`` on,
    charlm's handler answers SIGTERM alone again, and a SIGTERM Lightning caught before that
    stops the run before its first step.

    Args:
        stop_after_steps: stop after this many optimizer steps (``None``: train to the end).
        last_checkpoint: the run's writer of ``last.ckpt`` (``None``: the ``last_checkpoint``
            callback is disabled, and a stop writes nothing); settable until training starts.
    """

    def __init__(self, stop_after_steps: int | None = None, last_checkpoint: LastCheckpoint | None = None):
        self.stop_after_steps = int(stop_after_steps) if stop_after_steps else None
        #: the writer of ``last.ckpt`` a stop saves with (None: no last.ckpt is written)
        self.last_checkpoint = last_checkpoint
        #: the first stop signal received ("SIGINT" or "SIGTERM"), None if none
        self.signalled: str | None = None
        #: why training stopped early: "SIGINT", "SIGTERM" or "stop_after_steps=N"; None if it did not
        self.reason: str | None = None
        #: the optimizer step training stopped after (None if it did not stop early)
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}
        self._first_batch = True

    # ------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def catching_signals(self):
        """Context manager: SIGINT and SIGTERM only record the stop request while it is open (the
        previous handlers are restored on exit). Only in the main thread (elsewhere Python cannot
        install handlers, and the signals keep their previous handling)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        try:
            yield self
        finally:
            for s, h in self._previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signalled == "SIGINT":  # second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.signalled is None:
            self.signalled = name
            # os.write, not logging/print: a handler may run in the middle of a write to the
            # same stream, and Python's buffered streams refuse re-entry
            hint = " (Ctrl-C again to abort at once)" if name == "SIGINT" else ""
            msg = f"\n{name}: stopping cleanly; the step in progress finishes and is written to last.ckpt{hint}\n"
            try:
                os.write(2, msg.encode())
            except OSError:  # pragma: no cover - stderr closed
                pass

    def note_signal(self, name: str) -> None:
        """Record a stop signal that was caught elsewhere (Lightning's ``SIGTERMException``)."""
        if self.signalled is None:
            self.signalled = name

    def stop_before_training(self, step: int = 0) -> None:
        """Training stopped (or never started) before its first optimizer step of this process:
        nothing new was trained or written."""
        if self.reason is None:
            self.reason = self.signalled or "SIGTERM"
            self.stopped_at = step

    # ------------------------------------------------------------------ the stop path
    def _pending(self, trainer: L.Trainer, signals_only: bool = False) -> str | None:
        if self.signalled:
            return self.signalled
        if not signals_only and self.stop_after_steps is not None and trainer.global_step >= self.stop_after_steps:
            return f"stop_after_steps={self.stop_after_steps}"
        return None

    @staticmethod
    def _together(trainer: L.Trainer, local: bool) -> bool:
        """Whether any rank wants to stop (a collective under DDP)."""
        return bool(trainer.strategy.reduce_boolean_decision(local, all=False)) if trainer.world_size > 1 else local

    def _stop(self, trainer: L.Trainer, reason: str | None, save: bool = True) -> None:
        self.reason = reason or "SIGTERM"  # None: another rank was signalled
        self.stopped_at = trainer.global_step
        if not save:
            return
        last = self.last_checkpoint
        if last is None:
            if trainer.is_global_zero:
                log.warning("stopping after step %d (%s) without a checkpoint: the last_checkpoint callback is "
                            "disabled", trainer.global_step, self.reason)
            return
        last.write_last(trainer)  # during a validation: when it ends
        if trainer.is_global_zero:
            log.warning("stopping after step %d (%s), saved to %s. Continue with: %s",
                        trainer.global_step, reason or "another rank was signalled", shown_path(last.last_path),
                        command("charlm-train", resume=shown_path(trainer.default_root_dir)))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_batch = True
        if self._previous:  # inside catching_signals: take SIGTERM back from Lightning
            for s in STOP_SIGNALS:
                signal.signal(s, self._on_signal)
        if trainer.received_sigterm:  # caught by Lightning's handler after Trainer.fit installed it
            self.note_signal("SIGTERM")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if self.stopped_at is not None:
            raise StopTraining(self.reason)
        if self._first_batch:  # a stop requested before this process trained a step: none is trained
            self._first_batch = False
            reason = self._pending(trainer)
            if self._together(trainer, reason is not None):
                self._stop(trainer, reason, save=False)
                if trainer.is_global_zero:
                    log.warning("stopping before the first optimizer step (%s): nothing trained", self.reason)
                raise StopTraining(self.reason)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.stopped_at is None:
            reason = self._pending(trainer)
            if self._together(trainer, reason is not None):
                self._stop(trainer, reason)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a signal that came during this validation: the step is complete, stop now (a
        # stop_after_steps is decided at the step's end, before its validation)
        if trainer.sanity_checking or self.stopped_at is not None or trainer.state.fn != "fit":
            return
        reason = self._pending(trainer, signals_only=True)
        if self._together(trainer, reason is not None):
            self._stop(trainer, reason)
