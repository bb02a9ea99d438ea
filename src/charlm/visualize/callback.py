"""The training callback that writes the cells page (and the samples timeline) when a run ends."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from charlm.data.vocab import Vocab
from charlm.shell import shown_path

log = logging.getLogger(__name__)


class VisualizeCells(L.Callback):
    """At the end of training, show what the cells learned on held-out text.

    Takes ``max_chars`` characters from ``offset`` into the val split (the test split, then the
    train split, when there is none), writes ``<output_dir>/visualize/cells.html`` and
    ``cells_gates.png`` (see :func:`~charlm.visualize.build.visualize_text`), and
    ``samples.html`` from ``<output_dir>/samples.txt`` when the samples callback wrote one; the
    pages are also logged to W&B as ``visualize/cells`` and ``visualize/samples``
    (``wandb.Html``) and the plot as ``visualize/gate_saturation`` (``wandb.Image``). Runs on
    global rank 0 only.

    Args:
        output_dir: the run directory.
        max_chars: characters shown (keep it small: the page stores ``2 * L * H`` floats each).
        offset: where the slice starts within the split.
    """

    def __init__(self, output_dir: str, max_chars: int = 2000, offset: int = 0):
        self.output_dir = Path(output_dir)
        self.max_chars = int(max_chars)
        self.offset = int(offset)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.max_chars <= 0:
            return
        from charlm.visualize.build import visualize_samples, visualize_text

        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "split_ids"):
            log.warning("visualize: no charlm datamodule on the trainer; no cells page written")
            return
        ids = None
        for split in ("val", "test", "train"):
            if dm.has_split(split):
                ids = dm.split_ids(split)
                if len(ids) > 1:
                    break
        start = min(self.offset, max(len(ids) - 1, 0))
        text = dm.vocab.decode(ids[start : start + self.max_chars])
        out = self.output_dir / "visualize"
        res = visualize_text(
            pl_module.net, Vocab(pl_module.vocab), text, out,
            subtitle=f"{split} split from character {start:,}, after {trainer.global_step:,} steps.",
        )

        log.info("cells page: %s", shown_path(res.html_path))
        samples = None
        if (self.output_dir / "samples.txt").is_file():
            samples = visualize_samples(self.output_dir / "samples.txt", out)
            log.info("samples timeline: %s", shown_path(samples[0]))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                payload = {"visualize/cells": wandb.Html(res.html, inject=False)}
                if samples is not None:
                    payload["visualize/samples"] = wandb.Html(samples[1], inject=False)
                if res.png_path is not None:
                    payload["visualize/gate_saturation"] = wandb.Image(str(res.png_path))
                logger.experiment.log(payload)
