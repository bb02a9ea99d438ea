"""Callbacks: samples during training, the validation after the last step, and what the console
shows (progress lines without a terminal, the progress bar on one, the model summary).
``last.ckpt`` is written by :class:`~charlm.training.stopping.LastCheckpoint`."""

from __future__ import annotations

import datetime
import logging
import math
import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks import ModelSummary as _ModelSummary
from lightning.pytorch.loggers import WandbLogger

from charlm.data.vocab import Vocab
from charlm.sampling.sampler import sample
from charlm.sampling.samples_file import samples_block

log = logging.getLogger(__name__)

class SampleText(L.Callback):
    """At every validation, sample from a fixed prime at each temperature and record the text.

    Samples are appended to ``<output_dir>/samples.txt`` (blocks headed
    ``### step=<step> temperature=<t>``) and logged to W&B as a table ``samples`` with columns
    ``step, temperature, text``, so the evolution of samples during training can be read back
    (the blog's "evolution of samples while training").

    The rows are part of every checkpoint (``state_dict``): a resumed run's table holds the rows
    from before the checkpoint too, and its ``samples.txt`` is rewritten to exactly those rows
    (blocks written after the checkpoint by a killed run are dropped: those steps run again).

    Args:
        output_dir: the run directory.
        prime: text to start from (default: a newline, or the vocabulary's first character).
        length: new characters per sample.
        temperatures: one sample per temperature (e.g. ``[1.0, 0.6]``).
        seed: base seed; the sample at step ``s`` uses ``seed + s``, and the global RNG is not
            touched, so sampling never changes training.
    """

    def __init__(self, output_dir: str, prime: str | None = None, length: int = 200, temperatures=(1.0, 0.6), seed: int = 0):
        self.output_dir = Path(output_dir)
        self.prime = prime
        self.length = int(length)
        self.temperatures = [float(t) for t in temperatures]
        self.seed = int(seed)
        #: ``[step, temperature, text]`` of every sample so far, in order
        self.rows: list[list] = []
        self._restored = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.length <= 0:
            return
        step = trainer.global_step
        vocab = Vocab(pl_module.vocab)
        new = []
        for t in self.temperatures:
            text = sample(pl_module.net, vocab, self.prime, self.length, temperature=t, seed=self.seed + step)[0]
            new.append([step, t, text])
        self.rows += new
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "samples.txt", "a", encoding="utf-8") as f:
            f.write(samples_block(new))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self.log_table(logger, step, self.rows)

    @staticmethod
    def log_table(logger: WandbLogger, step: int, rows: list[list]) -> None:
        """Log the W&B table ``samples`` (columns ``step, temperature, text``) of ``rows`` at ``step``."""
        logger.log_text(key=SAMPLES_TABLE, columns=list(SAMPLES_COLUMNS), data=[list(r) for r in rows], step=step)

    def state_dict(self) -> dict:
        return {"rows": [list(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = [list(r) for r in state_dict.get("rows", [])]
        self._restored = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a resume: samples.txt holds exactly the checkpoint's rows (a run killed after
        # the checkpoint may have appended blocks for steps that now run again)
        if not self._restored or not trainer.is_global_zero:
            return
        self._restored = False
        path = self.output_dir / "samples.txt"
        if not self.rows and not path.exists():
            return
        by_step: dict[int, list[list]] = {}
        for r in self.rows:
            by_step.setdefault(int(r[0]), []).append(r)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(samples_block(rows) for rows in by_step.values()), encoding="utf-8")
        os.replace(tmp, path)


#: The W&B table of :class:`SampleText` and its columns.
SAMPLES_TABLE = "samples"
SAMPLES_COLUMNS = ("step", "temperature", "text")


def validation_off(trainer: L.Trainer) -> str | None:
    """Why ``trainer.fit`` will never validate (the setting to change), or ``None`` when it will."""
    limit = trainer.limit_val_batches
    if limit is not None and limit == 0:
        return "trainer.limit_val_batches=0"
    splits = getattr(trainer.datamodule, "splits", None)
    if splits is not None and len(splits) > 1 and float(splits[1]) <= 0:
        return "data.splits has no val split"
    if not trainer.enable_validation:
        return "no validation data"
    return None


class FinalValidation(L.Callback):
    """Validate after the last optimizer step of a run, so the final metrics, the best-k
    checkpoints, the sweep objective and the last logged rows describe the final weights
    (``last.ckpt``), whatever ``trainer.val_check_interval`` is.

    At the step that ends training (``trainer.max_steps`` reached, or the last batch of epoch
    ``trainer.max_epochs``) it sets ``trainer.should_stop``; Lightning's training loop then
    validates after that step, as it does for any requested stop (``EarlyStopping``, and the
    ``Timer`` of ``trainer.max_time``, which therefore needs nothing here). A step that validates
    anyway validates once. A run stopped early (``stop_after_steps``, a signal) has not ended
    and gets no validation from here. Validation switched off (:func:`validation_off`) is
    logged when training starts.

    Attributes:
        off: why the run does not validate (``None`` when it does).
        last_val_step: the optimizer step of the latest validation during training (``None``
            before the first).
    """

    def __init__(self) -> None:
        self.off: str | None = None
        self.last_val_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.off = validation_off(trainer)
        if self.off and trainer.is_global_zero:
            log.warning(
                "this run will never validate (%s): no val/loss, no best-by-val/loss checkpoints, no samples at "
                "validations%s", self.off,
                ", and scheduler=plateau keeps the learning rate constant" if _has_plateau(trainer) else "",
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.off:
            return
        step_end = trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        epoch_end = (
            trainer.max_epochs is not None
            and trainer.max_epochs > 0
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        )
        if step_end or epoch_end:
            trainer.should_stop = True  # the loop validates after this step, then ends

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.last_val_step = trainer.global_step


def _has_plateau(trainer: L.Trainer) -> bool:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return any(isinstance(c.scheduler, ReduceLROnPlateau) for c in trainer.lr_scheduler_configs)
def is_terminal() -> bool:
    """Whether the console (rich's, on stdout) is an interactive terminal: ``False`` when the
    output goes to a file or pipe (``charlm-train > run.log``, SLURM, nohup, CI)."""
    from rich import get_console

    return bool(get_console().is_terminal)


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressLog(L.Callback):
    """Training progress as log lines, for output that is not a terminal, where a progress bar
    draws nothing: one line every ``every_n_steps`` optimizer steps and one per validation (as
    char-rnn and nanoGPT print), to the console (stderr) and the run's ``train.log``::

        step 200/1800 (epoch 0) | train loss 2.0712 nats/char | 12,874 tokens/s | elapsed 0:00:41 | ETA 0:05:28
        step 250/1800 (epoch 0) | val loss 1.9731 nats/char, bpc 2.8466 | elapsed 0:00:55 | ETA 0:05:43

    * ``train loss``: cross-entropy of the step's batch (mean over all ranks' streams, nats per
      character), the step numbered as the optimizer steps taken so far.
    * ``tokens/s``: characters trained per second (all ranks) since the previous training line,
      validation time excluded.
    * ``ETA``: the time left to ``trainer.max_steps`` (or the epochs' steps) at this process's
      pace so far, validations included; ``?`` when the run is bounded by time only.

    Args:
        every_n_steps: optimizer steps between two training lines (``>= 1``).
        on_terminal: also log on a terminal, where the progress bar shows the same.
    """

    def __init__(self, every_n_steps: int = 100, on_terminal: bool = False):
        self.every_n_steps = int(every_n_steps)
        self.on_terminal = bool(on_terminal)
        self._t0: float | None = None
        self._step0 = 0
        self._t_last = 0.0
        self._tokens = 0
        self._val_s = 0.0
        self._v0: float | None = None
        self._logged_step = -1

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and (self.on_terminal or not is_terminal())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._t_last = time.perf_counter()
        self._step0 = trainer.global_step
        self._tokens, self._val_s, self._logged_step = 0, 0.0, trainer.global_step

    def _total_steps(self, trainer: L.Trainer) -> float:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return float(trainer.max_steps)
        try:
            return float(trainer.estimated_stepping_batches)
        except Exception:  # pragma: no cover - no bound Lightning can estimate
            return math.inf

    def _head(self, trainer: L.Trainer) -> str:
        total = self._total_steps(trainer)
        of = f"/{int(total):,}" if math.isfinite(total) else ""
        return f"step {trainer.global_step:,}{of} (epoch {trainer.current_epoch})"

    def _tail(self, trainer: L.Trainer, now: float) -> str:
        elapsed = now - (self._t0 or now)
        done = trainer.global_step - self._step0
        left = self._total_steps(trainer) - trainer.global_step
        eta = _hms(elapsed / done * left) if done > 0 and math.isfinite(left) else "?"
        return f"elapsed {_hms(elapsed)} | ETA {eta}"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        self._tokens += int(batch[0].numel()) * trainer.world_size
        step = trainer.global_step
        if step == self._logged_step or step % self.every_n_steps:
            return
        self._logged_step = step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:  # every rank joins the mean, whether or not it prints
            loss = float(trainer.strategy.reduce(loss.detach() * trainer.accumulate_grad_batches, reduce_op="mean"))
        now = time.perf_counter()
        train_s = now - self._t_last - self._val_s
        tps = self._tokens / train_s if train_s > 0 else math.nan
        self._t_last, self._tokens, self._val_s = now, 0, 0.0
        if not self._active(trainer):
            return
        shown = f"train loss {loss:.4f} nats/char | " if loss is not None else ""
        log.info("%s | %s%s tokens/s | %s", self._head(trainer), shown, f"{tps:,.0f}", self._tail(trainer, now))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        if self._v0 is not None:
            self._val_s += now - self._v0
            self._v0 = None
        if trainer.sanity_checking or self._t0 is None or not self._active(trainer):
            return
        m = trainer.callback_metrics
        if "val/loss" not in m:
            return
        log.info("%s | val loss %.4f nats/char, bpc %.4f | %s", self._head(trainer), float(m["val/loss"]),
                 float(m["val/bpc"]), self._tail(trainer, now))


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, drawn on a terminal only (elsewhere it would draw nothing
    until the end; :class:`ProgressLog` prints lines there), and without the epoch bound
    ``Epoch 2/-2`` that a run bounded by steps (``trainer.max_epochs=-1``) would show."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not is_terminal():
            self.disable()

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"


class ModelSummary(_ModelSummary):
    """Lightning's model summary (layers, parameters, size) without its FLOPs column: FLOPs are
    counted by running the module's ``example_input_array``, which charlm's module does not
    define, so the column and the total would be zeros."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int = 0, **summarize_kwargs) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        data = [col for col in summary_data if col[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, 0, *data)
        table = "\n".join(line for line in table.splitlines() if not line.endswith("Total Flops"))
        log.info("\n%s", table)
