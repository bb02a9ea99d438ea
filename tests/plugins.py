"""Lightning callbacks that tests add to real ``charlm-train`` runs, to make a moment deterministic
instead of waiting for it (never "wait for a file, then signal") or to inject a fault. In this
process a test passes ``plugins.<Callback>`` as a callback's target; a subprocess gets ``tests/`` on
its ``PYTHONPATH`` (``run_app(..., plugins=True)``)::

    +callbacks.interrupt._target_=plugins.SignalAt +callbacks.interrupt.signal=SIGTERM
    +callbacks.interrupt.hook=on_train_batch_end +callbacks.interrupt.step=3

:class:`SignalAt` and :class:`KillDuringWrite` subclass Lightning's ``Checkpoint`` only for the order
of their hooks: Lightning runs checkpoint callbacks after all others (``_reorder_callbacks``), so a
signal sent from ``on_train_batch_end`` lands after every charlm callback's end-of-step work, the
moment a stop used to be lost.
"""

from __future__ import annotations

import os
import signal

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint


# ----------------------------------------------------------------------------- signals and kills
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


#: the moments SignalAt can signal at: "init" (while charlm-train builds the run, before the
#: loggers are set up and before Trainer.fit) and these Lightning hooks
HOOKS = (
    "setup", "on_fit_start", "on_sanity_check_start", "on_train_start", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_batch_end", "on_save_checkpoint",
)


class SignalAt(Checkpoint):
    """Send ``signal`` (``"SIGTERM"``, ``"SIGINT"``) to this process once, at ``hook``, the first
    time it runs with ``trainer.global_step == step`` (outside the sanity check, except for
    ``on_sanity_check_start``); under DDP only on global rank ``rank`` when given."""

    def __init__(self, signal: str, hook: str, step: int = 0, rank: int | None = None):
        if hook != "init" and hook not in HOOKS:
            raise ValueError(f"hook={hook!r} is not one of init, {', '.join(HOOKS)}")
        self.signum = int(getattr(__import__("signal"), signal))
        self.hook = hook
        self.step = int(step)
        self.rank = rank
        self.sent = False
        if hook == "init":
            self._send()

    def _send(self) -> None:
        self.sent = True
        os.kill(os.getpid(), self.signum)  # Python runs the handler before the next bytecode

    def _at(self, hook: str, trainer) -> None:
        if self.sent or hook != self.hook or trainer.global_step != self.step:
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.sanity_checking and hook != "on_sanity_check_start":
            return
        self._send()

    def setup(self, trainer, pl_module, stage) -> None:
        self._at("setup", trainer)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._at("on_fit_start", trainer)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._at("on_sanity_check_start", trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._at("on_train_start", trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._at("on_train_batch_start", trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._at("on_train_batch_end", trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._at("on_validation_start", trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._at("on_validation_batch_end", trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._at("on_save_checkpoint", trainer)


class KillDuringWrite(Checkpoint):
    """SIGKILL this process half-way through writing the checkpoint of optimizer step ``step``:
    the file charlm opens for that write (``os.fdopen`` in
    :func:`charlm.checkpoint.atomic_torch_save`) receives the first half of its bytes, which are
    flushed to disk, and the process dies there."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step != self.step:
            return
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            os.fdopen = real_fdopen
            return _DieHalfWay(real_fdopen(fd, *args, **kwargs))

        os.fdopen = fdopen  # the next file opened is the checkpoint's temporary file


class _DieHalfWay:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data) -> None:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


class SigkillAt(L.Callback):
    """SIGKILL this process right after optimizer step ``$CHARLM_TEST_SIGKILL_AT_STEP``, when that
    is set (an environment variable, so that the resumed run, which replays the run's overrides,
    goes on)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        at = os.environ.get(SIGKILL_ENV)
        if at and trainer.global_step == int(at):
            os.kill(os.getpid(), signal.SIGKILL)


SIGKILL_ENV = "CHARLM_TEST_SIGKILL_AT_STEP"


# ----------------------------------------------------------------------------- faults
class PoisonGradient(L.Callback):
    """Turn one gradient NaN after the backward pass of step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad.view(-1)[0] = float("nan")


class PoisonWeight(L.Callback):
    """Set one decoder bias to +Inf before step ``step`` (a diverged weight), so the loss of that
    step and every later one is non-finite."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.decoder.bias[0] = float("inf")


class NaNStateOnRank(L.Callback):
    """Before optimizer step ``step`` (1-based), rank ``rank`` alone gets a NaN hidden state, so
    only its loss of that step is non-finite."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank != self.rank or trainer.global_step != self.step - 1:
            return
        state = pl_module.hidden or pl_module.net.init_state(batch[0].shape[0])
        pl_module.hidden = tuple(torch.full_like(s, float("nan")) for s in state)
