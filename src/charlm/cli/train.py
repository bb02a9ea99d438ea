"""``charlm-train``: train a character-level RNN (Hydra app; every option is ``key=value``).

Reads top to bottom: compose config -> seed -> data -> model -> callbacks/loggers -> Trainer ->
fit (ending with a validation) -> summary (:mod:`charlm.training.summary`). ``python -m charlm.cli.train
--help`` lists the config groups.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.checkpoint import AtomicCheckpointIO, RunInfo, checkpoint_step, find_checkpoint, load_initial_weights
from charlm.cli.common import hydra_app, user_error
from charlm.data.datamodule import SHUFFLE_LINES, CharDataModule
from charlm.errors import CharLMError, StopTraining, TrainingInterrupted
from charlm.options import Opt, check_options
from charlm.training import resume
from charlm.training.callbacks import FinalValidation
from charlm.training.history import keep_csv_history, rebuild_wandb_history, rebuilds_wandb_history
from charlm.training.module import CharLM
from charlm.training.run_config import current_overrides, resolved_config, run_overrides
from charlm.training.run_dir import check_new_run_dir
from charlm.training.stopping import GracefulStop, LastCheckpoint
from charlm.training.summary import summarize
from charlm.sweeps import check_multirun_ddp, finish_wandb, is_multirun, mark_recorded, name_wandb_run, objective, write_job_status

log = logging.getLogger("charlm.train")

#: The numeric and boolean options of a training run, checked before anything is built
#: (options of a config group that is not chosen, e.g. ``scheduler.warmup_steps`` with
#: ``scheduler=none``, are skipped). Choices, devices, accelerators and precisions are checked by
#: the classes that take them (their errors are reported by :func:`build`).
OPTIONS = {
    "seed": Opt(int),
    "stop_after_steps": Opt(int, min=1, null="train to the end"),
    "allow_changes": Opt(bool),
    "data.batch_size": Opt(int, min=1),
    "data.seq_len": Opt(int, min=1),
    "data.eval_batch_size": Opt(int, min=1, null="data.batch_size"),
    "data.eval_burn_in": Opt(int, min=0),
    "data.shuffle_lines": SHUFFLE_LINES,
    "model.hidden_size": Opt(int, min=1),
    "model.num_layers": Opt(int, min=1),
    "model.embedding_dim": Opt(int, min=1, null="model.hidden_size"),
    "model.dropout": Opt(float, min=0, lt=1),
    "model.tie_weights": Opt(bool),
    "optimizer.lr": Opt(float, min=0),
    "optimizer.weight_decay": Opt(float, min=0),
    "optimizer.momentum": Opt(float, min=0),
    "optimizer.eps": Opt(float, min=0),
    "scheduler.warmup_steps": Opt(int, min=0),
    "scheduler.min_lr_ratio": Opt(float, min=0, max=1),
    "scheduler.decay_rate": Opt(float, gt=0, max=1),
    "scheduler.decay_after": Opt(int, min=0),
    "scheduler.patience": Opt(int, min=0),
    "scheduler.factor": Opt(float, min=0, lt=1),
    "trainer.max_steps": Opt(int, min=-1),
    "trainer.max_epochs": Opt(int, min=-1, null="bounded by max_steps"),
    "trainer.val_check_interval": Opt(int, min=1, fraction=True, null="once per epoch"),
    "trainer.check_val_every_n_epoch": Opt(int, min=1, null="count val_check_interval across epochs"),
    "trainer.limit_val_batches": Opt(int, min=0, fraction=True, null="all"),
    "trainer.limit_train_batches": Opt(int, min=0, fraction=True, null="all"),
    "trainer.num_sanity_val_steps": Opt(int, min=-1),
    "trainer.log_every_n_steps": Opt(int, min=1),
    "trainer.accumulate_grad_batches": Opt(int, min=1),
    "trainer.num_nodes": Opt(int, min=1),
    "trainer.gradient_clip_val": Opt(float, min=0, null="no clipping"),
    "trainer.gradient_clip_algorithm": Opt(str, choices=("norm", "value")),
    "trainer.enable_model_summary": Opt(bool),
    "trainer.deterministic": Opt(bool),
    "callbacks.last_checkpoint.every_n_train_steps": Opt(int, min=1),
    "callbacks.model_checkpoint.save_top_k": Opt(int, min=-1),
    "callbacks.samples.length": Opt(int, min=0),
    "callbacks.samples.seed": Opt(int),
    "callbacks.visualize.max_chars": Opt(int, min=1, null="the whole val split"),
    "callbacks.visualize.offset": Opt(int, min=0),
    "callbacks.progress_log.every_n_steps": Opt(int, min=1),
    "callbacks.progress_log.on_terminal": Opt(bool),
}


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node)``, with a bad option of ``what`` (``trainer``, ``data``, ...)
    reported as a :class:`CharLMError` naming it, instead of Hydra's "Error in call to target"
    wrapper around the class's own message."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, CharLMError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):
            raise CharLMError(f"{what}: {cause} (check the {what}.* options)") from None
        raise


def build(cfg: DictConfig, overrides: list[str] | None = None,
          stop: GracefulStop | None = None) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """Instantiate the DataModule, the LightningModule and the Trainer from a composed config
    (``overrides``: the Hydra overrides that compose it, stored in checkpoints for ``resume=``;
    ``stop``: the run's :class:`~charlm.training.stopping.GracefulStop`, a new one if not given;
    it saves with the run's :class:`~charlm.training.stopping.LastCheckpoint`)."""
    dm: CharDataModule = _instantiate(cfg.data, "data")
    dm.prepare()  # vocabulary first: the model's output size depends on it
    module = CharLM(
        vocab=dm.vocab.chars,
        model=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=_instantiate(cfg.optimizer, "optimizer"),
        scheduler=_instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None,
        data=dm.config(),
        nonfinite=cfg.get("nonfinite", "stop"),
    )
    loggers = [_instantiate(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c is not None]
    for lg in loggers:
        if isinstance(lg, L.pytorch.loggers.WandbLogger) and lg._wandb_init.get("anonymous") is None:
            # Lightning always passes anonymous=None, which wandb >= 0.19 answers on every run with
            # "The anonymous setting has no effect and will be removed"
            lg._wandb_init.pop("anonymous")
    callbacks = [_instantiate(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    if not loggers:  # logger=none: Lightning refuses a LearningRateMonitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    if not OmegaConf.select(cfg, "trainer.enable_model_summary", default=True):
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ModelSummary)]
    if stop is None:
        stop = GracefulStop(cfg.get("stop_after_steps"))
    stop.last_checkpoint = next((c for c in callbacks if isinstance(c, LastCheckpoint)), None)
    callbacks += [RunInfo(resolved_config(cfg), run_overrides(overrides or [])), FinalValidation(), stop]
    # last.ckpt after the best-k checkpoints: rewritten at a validation, it holds their ranking
    callbacks.sort(key=lambda c: isinstance(c, LastCheckpoint))
    trainer: L.Trainer = _instantiate(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    return dm, module, trainer


def log_config(trainer: L.Trainer, cfg: DictConfig, module: CharLM) -> None:
    """Send the resolved config (plus parameter count) to every logger."""
    params: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    params["num_parameters"] = module.net.num_parameters()
    params["vocab_size"] = len(module.vocab)
    for lg in trainer.loggers:
        lg.log_hyperparams(params)


#: Step intervals a run shorter than them would never reach, and what each one writes. (Every
#: run validates and writes last.ckpt after its last step anyway: FinalValidation, LastCheckpoint.)
STEP_INTERVALS = {
    "trainer.log_every_n_steps": "train metrics in csv/metrics.csv and W&B",
}


def fit_intervals_to_run(cfg: DictConfig) -> list[str]:
    """Clamp every step interval of :data:`STEP_INTERVALS` that exceeds ``trainer.max_steps`` to
    it, in place, so that a run shorter than an interval still logs at its last step instead of
    writing none of it (``trainer.max_steps=20`` with the default ``log_every_n_steps=25``: no
    train rows in metrics.csv). Fractional intervals and runs without ``max_steps`` are left
    alone. Returns the notes it logged, one per clamped interval."""
    max_steps = OmegaConf.select(cfg, "trainer.max_steps")
    if not isinstance(max_steps, int) or max_steps <= 0:
        return []
    notes = []
    with open_dict(cfg):
        for key, what in STEP_INTERVALS.items():
            value = OmegaConf.select(cfg, key)
            if isinstance(value, int) and not isinstance(value, bool) and value > max_steps:
                OmegaConf.update(cfg, key, max_steps, merge=False)
                notes.append(f"{key}={value} is longer than the run (trainer.max_steps={max_steps}): "
                             f"using {max_steps}, so the last step still writes its {what}")
    for n in notes:
        log.info(n)
    return notes


def train(cfg: DictConfig, record: dict[str, Any] | None = None) -> dict[str, float]:
    """Run one training from a composed config; returns the final metrics (``val/loss``,
    ``val/bpc``, ``val/ppl`` when a val split exists, ``best/val_bpc``).

    SIGINT and SIGTERM are caught from the start (data preparation and logger set-up included):
    see :class:`~charlm.training.stopping.GracefulStop`.

    ``record``, when given, is filled with what the run's ``job_status.yaml`` needs, as soon as
    it is known: ``overrides`` (the run's own), ``resume`` (``{"overrides", "from_step"}`` when
    this is a ``resume=``), ``trainer`` (once built), ``stopped`` (``stop_after_steps=N`` when the
    run stopped there before ``trainer.max_steps``).

    Raises:
        TrainingInterrupted: after a run stopped by SIGINT/SIGTERM (``last.ckpt`` of the
            last completed step written, summary printed), carrying the metrics and the exit code.
    """
    check_options(cfg, OPTIONS)
    stop = GracefulStop(cfg.get("stop_after_steps"))
    with stop.catching_signals():
        return _train(cfg, stop, {} if record is None else record)


def continue_from(cfg: DictConfig) -> tuple[str, Any]:
    """``(option, value)`` of the checkpoint a new run continues from: ``ckpt=``, or its deprecated
    old name ``ckpt_path=`` (with a warning); ``("ckpt", None)`` when neither is given.

    Raises:
        CharLMError: both are given.
    """
    new, old = cfg.get("ckpt"), cfg.get("ckpt_path")
    if new and old:
        raise CharLMError("ckpt= and ckpt_path= are one option (ckpt_path= is its deprecated old name): give ckpt= only")
    if old:
        log.warning("ckpt_path= is deprecated and goes in the next release: use ckpt=%s, the checkpoint option "
                    "of every charlm app", old)
        return "ckpt_path", old
    return "ckpt", new


def _train(cfg: DictConfig, stop: GracefulStop, record: dict[str, Any]) -> dict[str, float]:
    check_multirun_ddp(cfg)
    overrides = current_overrides(cfg)
    record["overrides"] = list(overrides)
    ckpt_path = None
    option, given = continue_from(cfg)
    if given:
        ckpt_path = str(find_checkpoint(given, option=option)[0])  # a missing checkpoint is an error
    if cfg.get("resume"):
        if cfg.get("init_from"):
            raise CharLMError("resume= and init_from= exclude each other: resume continues a run, init_from starts a new one")
        invocation = list(overrides)
        cfg, found, overrides = resume.prepare_resume(cfg)
        ckpt_path = str(found)
        record.update(overrides=list(overrides), resume={"overrides": invocation, "from_step": checkpoint_step(found)})
    fit_intervals_to_run(cfg)
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    if not cfg.get("resume"):
        check_new_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    dm, module, trainer = build(cfg, overrides, stop)
    record["trainer"] = trainer
    if cfg.get("init_from"):
        load_initial_weights(module, cfg.init_from)
    if given and not cfg.get("resume"):
        resume.warn_split_change(ckpt_path, dm.splits, dm.shuffle_lines, option)
    if cfg.get("resume"):
        resume.check_resumed_corpus(ckpt_path, dm.corpus, bool(cfg.get("allow_changes")), cfg.resume)
        rows = keep_csv_history(trainer, checkpoint_step(ckpt_path))
        if rebuilds_wandb_history(cfg):
            rebuild_wandb_history(trainer, ckpt_path, rows)
    log.info(
        "model: %s %dx%d, %s parameters; data: batch %d x seq %d",
        module.net.cell, module.net.num_layers, module.net.hidden_size,
        f"{module.net.num_parameters():,}", dm.batch_size, dm.seq_len,
    )
    log_config(trainer, cfg, module)
    t0 = time.time()
    stopped_early = True
    if stop.signalled:  # before training started (data preparation, logger set-up): train nothing
        stop.stop_before_training(checkpoint_step(ckpt_path) if ckpt_path else 0)
    else:
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
            stopped_early = False
        except StopTraining:
            pass
        except SIGTERMException:
            # Lightning's own SIGTERM handling (only in force between Trainer.fit installing it
            # and GracefulStop.on_train_start): the run stopped before its first step
            stop.note_signal("SIGTERM")
            stop.stop_before_training(trainer.global_step)
    wall = time.time() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = _best_val(trainer)
    if best is not None:
        metrics["best/val_loss"] = best
        metrics["best/val_bpc"] = best / math.log(2)
    stopped = stop.reason if stopped_early else None
    if stopped and stopped not in ("SIGINT", "SIGTERM"):
        record["stopped"] = f"{stopped} (trainer.max_steps={trainer.max_steps})"
    if trainer.is_global_zero:
        summarize(cfg, trainer, module, metrics, wall, stopped)
    if stopped in ("SIGINT", "SIGTERM"):
        raise TrainingInterrupted(stopped, trainer.global_step, metrics)
    return metrics


def _best_val(trainer: L.Trainer) -> float | None:
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) == "val/loss" and cb.best_model_score is not None:
            return float(cb.best_model_score)
    return None


def run(cfg: DictConfig) -> float | None:
    """The Hydra task (:data:`hydra_main`); returns the best ``val/bpc`` (the value a sweeper optimises). The W&B
    run is named/grouped by the job's overrides and sweep, and finished even when training fails
    (see :mod:`charlm.sweeps`). A run stopped by SIGINT/SIGTERM exits 130/143 as shells do (in a
    multirun the job fails and ``job_status.yaml`` says ``INTERRUPTED``)."""
    name_wandb_run(cfg)
    metrics = None
    interrupted = None
    record: dict[str, Any] = {}
    try:
        try:
            metrics = train(cfg, record)
        except TrainingInterrupted as e:
            interrupted = e
        finally:
            finish_wandb(metrics, failed=metrics is None)
        value = objective(metrics) if interrupted is None else None
    except (Exception, KeyboardInterrupt) as e:
        record_status(cfg, record, error=e)
        raise
    record_status(cfg, record, value=value, interrupted=interrupted)
    if interrupted is not None:
        if is_multirun():
            raise interrupted
        sys.exit(interrupted.exit_code)
    return value


def record_status(cfg: DictConfig, record: dict[str, Any], value: float | None = None,
                  interrupted: TrainingInterrupted | None = None, error: BaseException | None = None) -> None:
    """Write the run's ``job_status.yaml`` (:func:`charlm.sweeps.write_job_status`) from what
    :func:`train` put in ``record``: COMPLETED, STOPPED (``stop_after_steps``), INTERRUPTED
    (SIGINT/SIGTERM, or a second Ctrl-C) or FAILED (``error``). A ``resume=`` refused before
    training started leaves the resumed run's record as it was."""
    trainer = record.get("trainer")
    step = int(trainer.global_step) if trainer is not None else None
    if trainer is not None and not trainer.is_global_zero:
        return
    rec_resume = record.get("resume")
    out = cfg.paths.output_dir
    if error is not None and trainer is None and cfg.get("resume"):
        mark_recorded(out)  # nothing of the run changed: its own record stands
        return
    overrides = record.get("overrides", current_overrides(cfg))
    if interrupted is not None or isinstance(error, KeyboardInterrupt):
        message = str(interrupted) if interrupted is not None else f"training aborted by a second Ctrl-C at step {step}"
        write_job_status(out, "INTERRUPTED", overrides, step=step, error=message, resume=rec_resume)
    elif error is not None:
        error = user_error(error) or error  # charlm's own message, not Hydra's instantiate wrapper
        write_job_status(out, "FAILED", overrides, step=step, error=f"{type(error).__name__}: {error}", resume=rec_resume)
    elif record.get("stopped"):
        write_job_status(out, "STOPPED", overrides, value=value, step=step, reason=record["stopped"], resume=rec_resume)
    else:
        write_job_status(out, "COMPLETED", overrides, value=value, step=step, resume=rec_resume)


class _DropAdverts(logging.Filter):
    """Drop Lightning's "💡 Tip: try installing ..." product adverts from the console, and its
    note that the model summary callback it would add is already there (charlm's, without
    the FLOPs column)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip", "Trainer already configured with model summary callbacks"))


_ADVERTS = _DropAdverts()


def quiet_third_party() -> None:
    """Keep the console for charlm's own lines: no product tips, no notices from inside
    Lightning and torch that a user cannot act on. Idempotent; the benchmarks call it too.

    Silenced: Lightning's litmodels/litlogger tips and its note on the model summary callback; its advice to log epoch-level metrics with
    ``sync_dist=True`` (charlm's val/test metrics are torchmetrics metrics, already reduced
    over all ranks before they are logged); torch's deprecation notice for the all-gather that
    ``LightningModule.all_gather`` makes under DDP (resume state); a pytree notice from inside Lightning."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _ADVERTS not in rank_zero.filters:
        rank_zero.addFilter(_ADVERTS)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/.*sync_dist=True")
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")


hydra_main, main = hydra_app("train", run, setup=quiet_third_party)


if __name__ == "__main__":
    main()
