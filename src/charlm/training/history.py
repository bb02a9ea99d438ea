"""A resumed run's logs hold the whole run, each step once: ``metrics.csv`` is kept up to the
checkpoint (:func:`keep_csv_history`) and, offline, the W&B run is written again from it
(:func:`rebuild_wandb_history`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from charlm.checkpoint import peek_checkpoint

log = logging.getLogger(__name__)


def keep_csv_history(trainer: L.Trainer, step: int) -> list[dict[str, str]] | None:
    """Keep a resumed run's ``metrics.csv``: Lightning's ``CSVLogger`` deletes an existing file
    when it starts, so the rows logged up to the checkpoint's ``step`` are put back (rows logged
    after it, by a run killed before its next checkpoint, are dropped: those steps run again).

    Returns:
        the rows kept (``csv.DictReader`` rows: column -> text, empty where a row has no value),
        or ``None`` when there is no CSV logger or no ``metrics.csv`` (and on ranks other than 0).
    """
    import csv
    import io

    from lightning.pytorch.loggers import CSVLogger

    kept: list[dict[str, str]] | None = None
    for lg in trainer.loggers:
        if not isinstance(lg, CSVLogger) or not trainer.is_global_zero:
            continue
        path = Path(lg.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        header = list(csv.DictReader(io.StringIO(text)).fieldnames or [])
        writer = lg.experiment  # creating the writer deletes the file
        keep = [r for r in rows if r.get("step") in (None, "") or int(float(r["step"])) < step]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(keep)
        writer.metrics_keys = sorted(set(header))
        if kept is None:
            kept = keep
    return kept


#: Where earlier W&B folders of a resumed run go (under ``<run dir>/wandb/``), out of the reach
#: of ``wandb sync <run dir>/wandb/offline-run-*`` and ``wandb sync <run dir>/wandb``.
SUPERSEDED_WANDB = "superseded"


def rebuilds_wandb_history(cfg: DictConfig) -> bool:
    """Whether resuming ``cfg``'s run writes its whole W&B run again (:func:`rebuild_wandb_history`):
    W&B offline (the default) and a CSV logger to take the history from. Online, or without a
    CSV log, the W&B run is resumed as W&B does it (``resume="allow"``)."""
    wb = OmegaConf.select(cfg, "logger.wandb", default=None)
    if wb is None:
        return False
    offline = bool(wb.get("offline", False)) or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")
    loggers = OmegaConf.select(cfg, "logger", default=None) or {}
    has_csv = any(c is not None and str(c.get("_target_", "")).endswith("CSVLogger") for c in loggers.values())
    return offline and has_csv


def rebuild_wandb_history(trainer: L.Trainer, ckpt_path: str | Path, rows: list[dict[str, str]] | None) -> list[Path]:
    """Make a resumed run's offline W&B files hold the whole run, each step once.

    W&B (0.31) cannot drop what an earlier process logged after the checkpoint: ``wandb sync``
    uploads a resumed run's offline folders one after the other, so steps run again after a
    resume from an earlier checkpoint (a SIGKILL between checkpoints, ``resume=<best-k file>``)
    would appear twice, and a killed process leaves its last seconds unwritten (its ``.wandb``
    file may even hold the header only). Instead, before the W&B run starts:

    1. the run's earlier offline folders (``wandb/offline-run-*-<id>``) are moved to
       ``wandb/superseded/`` (kept, but out of the reach of ``wandb sync``);
    2. the new folder (same run id) gets the history up to the checkpoint again: the CSV rows
       kept by :func:`keep_csv_history` (``rows``; every row the loggers received, W&B's
       included) and the ``samples`` table at each validation, from the rows of
       :class:`~charlm.training.callbacks.SampleText` stored in the checkpoint, in step order.

    Training then logs from the checkpoint on, so the one folder holds each step once, in order.
    Rank 0 only. Returns the folders moved aside.
    """
    from lightning.pytorch.loggers import WandbLogger

    from charlm.training.callbacks import SampleText

    if not trainer.is_global_zero:
        return []
    moved: list[Path] = []
    samples = next((cb for cb in trainer.callbacks if isinstance(cb, SampleText)), None)
    sample_rows: list[list] = []
    if samples is not None:
        states = peek_checkpoint(ckpt_path).get("callbacks") or {}
        sample_rows = [list(r) for r in (states.get(samples.state_key) or {}).get("rows", [])]
    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger) or not lg.save_dir or not lg.version:
            continue
        folder = Path(lg.save_dir) / "wandb"
        for old in sorted(folder.glob(f"offline-run-*-{lg.version}")):
            aside = folder / SUPERSEDED_WANDB / old.name
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, aside)
            moved.append(aside)
        events: list[tuple[int, int, int, Any]] = []
        for i, row in enumerate(rows or []):
            metrics = {k: _csv_number(v) for k, v in row.items() if k != "step" and v not in (None, "")}
            if metrics and row.get("step") not in (None, ""):
                events.append((int(float(row["step"])), 0, i, metrics))
        for i, step in enumerate(dict.fromkeys(int(r[0]) for r in sample_rows)):
            events.append((step, 1, i, [r for r in sample_rows if int(r[0]) <= step]))
        for step, kind, _, payload in sorted(events, key=lambda e: e[:3]):
            if kind == 0:
                lg.log_metrics(payload, step=step)
            else:
                SampleText.log_table(lg, step, payload)
        if moved or events:
            log.info(
                "W&B: the run's history up to the checkpoint was written again into the new offline folder "
                "(%d metric rows, %d samples tables)%s; it holds the whole run",
                sum(1 for e in events if e[1] == 0), sum(1 for e in events if e[1] == 1),
                f"; earlier folders moved to {folder / SUPERSEDED_WANDB}" if moved else "",
            )
    return moved


def _csv_number(text: str) -> int | float:
    """A metric value as the CSV logger wrote it (``repr`` of an int or a float): the same number."""
    try:
        return int(text)
    except ValueError:
        return float(text)
