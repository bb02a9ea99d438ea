"""Callbacks: samples during training, and ``last.ckpt`` that is also written when training ends."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from charlm.data.vocab import Vocab
from charlm.sampling.sampler import sample

log = logging.getLogger(__name__)

SAMPLE_HEADER = "### step={step} temperature={temperature}"


class SampleText(L.Callback):
    """At every validation, sample from a fixed prime at each temperature and record the text.

    Samples are appended to ``<output_dir>/samples.txt`` (blocks headed
    ``### step=<step> temperature=<t>``) and logged to W&B as a table ``samples`` with columns
    ``step, temperature, text``, so the evolution of samples during training can be read back
    (the blog's "evolution of samples while training").

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
        self.rows: list[list] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.length <= 0:
            return
        step = trainer.global_step
        vocab = Vocab(pl_module.vocab)
        blocks = []
        for t in self.temperatures:
            text = sample(pl_module.net, vocab, self.prime, self.length, temperature=t, seed=self.seed + step)[0]
            self.rows.append([step, t, text])
            blocks.append(f"{SAMPLE_HEADER.format(step=step, temperature=t)}\n{text}\n")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "samples.txt", "a", encoding="utf-8") as f:
            f.write("\n".join(blocks) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["step", "temperature", "text"], data=list(self.rows), step=step)


def read_samples(path: str | Path) -> list[dict]:
    """Parse a ``samples.txt`` written by :class:`SampleText` into
    ``[{"step": int, "temperature": float, "text": str}, ...]`` in file order."""
    out: list[dict] = []
    current = None
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line.startswith("### step=") and " temperature=" in line:
            if current:
                out.append(current)
            head = dict(part.split("=", 1) for part in line[4:].split())
            current = {"step": int(head["step"]), "temperature": float(head["temperature"]), "lines": []}
        elif current is not None:
            current["lines"].append(line)
    if current:
        out.append(current)
    for r in out:
        lines = r.pop("lines")
        while lines and lines[-1] == "":
            lines.pop()
        r["text"] = "\n".join(lines)
    return out


class LastCheckpoint(ModelCheckpoint):
    """The one writer of ``last.ckpt``: the newest state of the run, from which ``resume=`` continues.

    ``last.ckpt`` is written (always through :meth:`write_last`):

    - every ``every_n_train_steps`` optimizer steps;
    - after the run's last step (``trainer.max_steps``), so a run extended later continues exactly;
    - when training ends otherwise (``max_epochs``, ``max_time``);
    - when a stop asks for it (:class:`~charlm.training.resume.StopControl`: ``stop_after_steps``,
      Ctrl-C, SIGTERM).

    A ``last.ckpt`` written at a step that is then validated is written again right after that
    validation, once the best-k files are saved (Lightning runs checkpoint callbacks after the
    others, in the order configured: ``model_checkpoint`` before ``last_checkpoint``). It then
    holds that validation's result and the best-k bookkeeping, so a run resumed from it neither
    validates that step again nor loses track of a best-k file (``save_top_k`` files stay
    ``save_top_k``). Writes are atomic (:class:`~charlm.checkpoint.AtomicCheckpointIO`).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 250, **kwargs):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps, **kwargs)
        self._written_step: int | None = None  # optimizer step of the last last.ckpt this process wrote
        self._after_validation: int | None = None  # step whose last.ckpt is due when its validation ends

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
