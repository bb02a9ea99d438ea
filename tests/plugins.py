"""Lightning callbacks that tests add to real ``charlm-train`` runs by a Hydra override, to make a
moment deterministic instead of waiting for it:

    +callbacks.signal._target_=plugins.SignalAtStep +callbacks.signal.step=3

(the test puts ``tests/`` on the subprocess's ``PYTHONPATH``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    """Send ``signum`` (a name: ``SIGTERM``, ``SIGINT``) to this process right after optimizer step
    ``step``, as a user's Ctrl-C or a scheduler's SIGTERM would arrive mid-run."""

    def __init__(self, step: int, signum: str = "SIGTERM"):
        self.step = int(step)
        self.signum = getattr(signal, signum)
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)
