"""charlm's exceptions: the one type it raises for bad input, and the two that end a training early.

Every user-facing error (bad corpus, bad option, bad checkpoint, bad prime) is a
:class:`CharLMError` whose message says what was wrong and how to fix it. The command-line
apps print the message alone (no traceback) and exit with status 2.

A training stopped before its end (``stop_after_steps``, SIGINT, SIGTERM; see
:class:`charlm.training.stopping.GracefulStop`) leaves ``Trainer.fit`` with
:class:`StopTraining`; one stopped by a signal then ends with :class:`TrainingInterrupted`.
"""

from __future__ import annotations

import signal


class CharLMError(ValueError):
    """Bad input or configuration, with a message meant for the user (what, and how to fix it)."""


class TrainingInterrupted(Exception):
    """Raised by :func:`charlm.cli.train.train` after a run stopped on SIGINT/SIGTERM (``last.ckpt``
    of the last completed step written, when there was one, and the summary printed), so the run is
    not taken for a finished one.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        step: the optimizer step it stopped after (0: before the first one).
        metrics: the metrics at that point (as :func:`~charlm.cli.train.train` returns them).
        exit_code: ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), as shells report.
    """

    def __init__(self, signal_name: str, step: int, metrics: dict[str, float] | None = None):
        self.signal_name = signal_name
        self.step = step
        self.metrics = metrics
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGTERM))
        super().__init__(f"training interrupted by {signal_name} at step {step}")


class StopTraining(Exception):
    """Raised by :class:`~charlm.training.stopping.GracefulStop` from ``on_train_batch_start``
    once a stop is decided (and ``last.ckpt`` written): it leaves ``Trainer.fit`` before anything
    else happens, so a stopped run holds no validation, best-k file, sample or end-of-training page
    that a run never stopped would not have at that step. :func:`charlm.cli.train.train` catches it."""
