"""Sweep plumbing: W&B run identity per job, finishing runs, the sweep objective, and a Hydra
callback that reports failed jobs.

A Hydra multirun (``charlm-train -m model.hidden_size=128,256 optimizer.lr=1e-3,3e-3``) runs
every job in the same process (BasicLauncher) or in worker processes (joblib, submitit). Each
job gets its own W&B run, *grouped* by the sweep (``<task_name>/<sweep dir name>``) and *named*
by its overrides (Hydra's ``override_dirname``, e.g. ``model.hidden_size=128,optimizer.lr=0.001``),
and the run is always finished, with exit code 1 when the job raised, so a failed job never
leaks its open run into the next job of the same process.
"""

from __future__ import annotations

import logging
import math
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.cli.common import command
from charlm.errors import CharLMError

log = logging.getLogger("charlm.sweeps")

#: File written into every job's run dir by :class:`JobReport` (read by ``charlm-report``).
JOB_STATUS_FILE = "job_status.yaml"


def job_dirname(num: Any, overrides: Any = "", max_len: int = 120) -> str:
    """The sub-folder name of multirun job ``num``: ``<num>_<overrides>`` (Hydra's
    ``override_dirname``), with ``/`` replaced by ``_`` and cut to ``max_len`` characters
    (a cut name ends in ``~`` and 8 hex digits of the overrides' SHA-1), so that many overrides
    never exceed the file system's 255-byte name limit. The job number keeps names unique
    within a sweep; the sweep folder itself is stamped to the microsecond.

    Used as ``${charlm.job_dirname:${hydra.job.num},${hydra.job.override_dirname}}``."""
    import hashlib

    text = str(overrides or "").replace("/", "_").replace("\\", "_")
    name = f"{num}_{text}" if text else str(num)
    if len(name) > max_len:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        name = f"{name[: max_len - 9]}~{digest}"
    return name


def _hydra_cfg() -> DictConfig | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # pragma: no cover - Hydra not set up (plain python use)
        return None


def _is_multirun(hc: DictConfig | None) -> bool:
    if hc is None:
        return False
    from hydra.types import RunMode

    return hc.mode == RunMode.MULTIRUN


def name_wandb_run(cfg: DictConfig) -> None:
    """Fill in ``logger.wandb.name``, ``group`` and ``tags`` of ``cfg`` in place, where unset.

    * name: the run's overrides (``hydra.job.override_dirname``), e.g.
      ``model.hidden_size=128,optimizer.lr=0.001``; in a multirun all the job's overrides, sorted
      (``seed=2,trainer.max_steps=100``: a swept key is always in the name, also those that job
      folder names leave out), or ``job<num>`` when it has none.
    * group (multirun only): ``<task_name>/<sweep dir name>``, the same for every job of a sweep,
      so W&B's "group by" shows one sweep per group.
    * tags: the user's tags plus the corpus name, the cell type and ``sweep`` in a multirun.

    Does nothing when W&B is not among the loggers or Hydra is not initialised.
    """
    wb = OmegaConf.select(cfg, "logger.wandb")
    hc = _hydra_cfg()
    if wb is None or hc is None:
        return
    multirun = _is_multirun(hc)
    overrides = OmegaConf.select(hc, "job.override_dirname", default="") or ""
    if multirun:
        # every override of the job, the ones override_dirname leaves out (seed, ...) included:
        # a sweep over seed=1,2,3 alone must not give runs of one name
        overrides = ",".join(sorted(str(o) for o in (OmegaConf.select(hc, "overrides.task", default=None) or [])))
    with open_dict(cfg):
        if wb.get("name") is None:
            if overrides:
                wb.name = overrides
            elif multirun:
                wb.name = f"job{OmegaConf.select(hc, 'job.num', default=0)}"
        if multirun and wb.get("group") is None:
            wb.group = f"{cfg.get('task_name', 'train')}/{Path(str(hc.sweep.dir)).name}"
        tags = [str(t) for t in (wb.get("tags") or [])]
        extra = [OmegaConf.select(cfg, "data.name"), OmegaConf.select(cfg, "model.cell")]
        if multirun:
            extra.append("sweep")
        for t in extra:
            if t and str(t) not in tags:
                tags.append(str(t))
        wb.tags = tags


def finish_wandb(metrics: dict[str, float] | None = None, failed: bool = False) -> None:
    """Write the best metrics and the parameter count into the open W&B run's summary and
    finish it (``exit_code=1`` when ``failed``). A no-op when no W&B run is open; never raises
    (a W&B problem must not turn a finished training into a failed job)."""
    try:
        import wandb

        run = wandb.run
        if run is None:
            return
        summary: dict[str, Any] = {}
        for k, v in (metrics or {}).items():
            if k.startswith("best/") and math.isfinite(v):
                summary[k] = v
        n = run.config.get("num_parameters")
        if n is not None:
            summary["num_parameters"] = n
        if summary:
            run.summary.update(summary)
        wandb.finish(exit_code=1 if failed else 0)
    except Exception as e:  # pragma: no cover - W&B absent or already closed
        log.warning("could not finish the W&B run: %s", e)


def objective(metrics: dict[str, float]) -> float | None:
    """The value a sweeper minimises: the best ``val/bpc`` (bits per character) of the run (over
    every validation, the one after the last step included, so it is never worse than the final
    weights' ``last.ckpt``), else the last ``val/bpc``; ``None`` when the run had no validation.

    Raises:
        CharLMError: in a multirun, when that value is NaN or infinite, so that Hydra records the
            job (and Optuna the trial) as failed instead of ranking a NaN.
    """
    value = metrics.get("best/val_bpc", metrics.get("val/bpc"))
    if value is not None and not math.isfinite(value) and _is_multirun(_hydra_cfg()):
        raise CharLMError(
            f"the run's val/bpc is {value}: training diverged. Lower optimizer.lr or keep gradient clipping on."
        )
    return value


class JobReport(Callback):
    """Hydra callback (``hydra.callbacks``) for sweeps.

    * ``on_multirun_start``: creates the folder of a ``sqlite:///`` Optuna storage (SQLite does
      not create parent folders).
    * ``on_job_end``: writes ``<job dir>/job_status.yaml`` (``status``, ``overrides``, ``value`` or
      ``error``; ``INTERRUPTED`` for a job stopped by SIGINT/SIGTERM) and logs a failed job with its overrides and run dir. Hydra's BasicLauncher runs
      the remaining jobs of the batch after a failure, then exits non-zero with the first error.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        out = Path(str(config.hydra.runtime.output_dir))
        overrides = list(job_return.overrides or [])
        # a single run has no job number, and reports its own errors (charlm.cli.common.clean_errors)
        multirun = _is_multirun(config.hydra)
        err = job_return._return_value if job_return.status == JobStatus.FAILED else None
        if type(err).__name__ == "TrainingInterrupted":  # stopped by a signal, last.ckpt written
            write_job_status(out, "INTERRUPTED", overrides, error=str(err))
            if multirun:
                log.warning("job %s INTERRUPTED (%s): %s; resume with %s",
                            config.hydra.job.num, " ".join(overrides), err, command("charlm-train", resume=out))
        elif job_return.status == JobStatus.FAILED:
            error = f"{type(err).__name__}: {err}"
            write_job_status(out, "FAILED", overrides, error=error)
            if multirun:
                log.error("job %s FAILED (%s): %s; run dir %s", config.hydra.job.num, " ".join(overrides), error, out)
                if not isinstance(err, CharLMError):
                    log.debug("".join(traceback.format_exception(err)))
        else:
            value = job_return._return_value
            write_job_status(out, job_return.status.name, overrides, value=float(value) if isinstance(value, (int, float)) else None)


def write_job_status(run_dir: Path, status: str, overrides: list[str], value: float | None = None,
                     error: str | None = None) -> None:
    """Write ``<run_dir>/job_status.yaml``: ``status`` (COMPLETED, FAILED, INTERRUPTED), the
    job's ``overrides``, and ``value`` (the objective) or ``error`` (``"<type>: <message>"``).
    Never raises: a run dir that cannot be written is logged."""
    data: dict[str, Any] = {"status": status, "overrides": list(overrides)}
    if error is not None:
        data["error"] = error
    elif status == "COMPLETED":
        data["value"] = value
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(data), run_dir / JOB_STATUS_FILE)
    except OSError as e:  # pragma: no cover - read-only or vanished run dir
        log.warning("could not write %s: %s", run_dir / JOB_STATUS_FILE, e)
