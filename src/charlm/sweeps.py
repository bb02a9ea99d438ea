"""Sweep plumbing: W&B run identity per job, finishing runs, the sweep objective, a Hydra
callback that reports failed jobs, and the guard against multirun jobs that would launch DDP
processes themselves (:func:`check_multirun_ddp`).

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
import os
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.errors import CharLMError
from charlm.job_status import JOB_STATUS_FILE
from charlm.shell import command, shown_path

log = logging.getLogger("charlm.sweeps")


def _hydra_cfg() -> DictConfig | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # pragma: no cover - Hydra not set up (plain python use)
        return None


def is_multirun(hydra_cfg=None) -> bool:
    """Whether Hydra runs this job as part of a multirun (``-m``). ``hydra_cfg``: the ``hydra``
    node of a job's config (a Hydra callback's ``config.hydra``); by default the running app's
    (``HydraConfig``). ``False`` outside Hydra."""
    try:
        from hydra.types import RunMode

        if hydra_cfg is None:
            from hydra.core.hydra_config import HydraConfig

            if not HydraConfig.initialized():
                return False
            hydra_cfg = HydraConfig.get()
        return OmegaConf.select(hydra_cfg, "mode", default=None) == RunMode.MULTIRUN
    except Exception:  # pragma: no cover - Hydra not set up (plain python use)
        return False


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
    multirun = is_multirun(hc)
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
    if value is not None and not math.isfinite(value) and is_multirun():
        raise CharLMError(
            f"the run's val/bpc is {value}: training diverged. Lower optimizer.lr or keep gradient clipping on."
        )
    return value


def write_job_status(
    out_dir: str | Path,
    status: str,
    overrides: list[str],
    *,
    value: float | None = None,
    step: int | None = None,
    reason: str | None = None,
    error: str | None = None,
    resume: dict[str, Any] | None = None,
) -> Path:
    """Write ``<out_dir>/job_status.yaml``, the record of how a run ended (read by ``charlm-report``).

    Fields: ``status`` (``COMPLETED``, ``STOPPED`` by ``stop_after_steps`` before ``max_steps``,
    ``INTERRUPTED`` by SIGINT/SIGTERM, ``FAILED``), ``overrides`` (the run's own overrides),
    ``value`` (the sweep objective: best val bits per character; ``null`` without validation),
    ``step`` (optimizer steps done), ``reason`` (why a STOPPED run stopped), ``error`` (FAILED /
    INTERRUPTED), ``resumes`` (one entry per ``resume=`` of the run: its command-line overrides,
    ``from_step``, ``to_step``).

    ``resume`` (``{"overrides": [...], "from_step": N}``) marks a resumed run: the existing
    record's ``overrides`` are kept (less a ``stop_after_steps``, updated by the resume's
    run-defining overrides, e.g. a longer ``trainer.max_steps``) and the resume is appended to
    ``resumes``; when the resume trained no step, the record's ``value`` is kept (it describes
    the same final weights).

    Never raises for an unwritable run dir (a warning is logged instead)."""
    out = Path(out_dir)
    path = out / JOB_STATUS_FILE
    old: dict[str, Any] = {}
    if resume is not None and path.is_file():
        try:
            old = OmegaConf.to_container(OmegaConf.load(path)) or {}  # type: ignore[assignment]
        except Exception:  # pragma: no cover - a damaged record is replaced
            old = {}
    record: dict[str, Any] = {"status": status, "overrides": [str(o) for o in overrides]}
    if resume is not None:
        from charlm.training.run_config import merge_overrides, override_key, run_overrides

        if old.get("overrides"):  # a stop_after_steps belonged to the invocation that stopped the run
            kept = [str(o) for o in old["overrides"] if override_key(str(o)) != "stop_after_steps"]
            record["overrides"] = merge_overrides(kept, run_overrides(list(resume["overrides"])))
        if step is not None and step == resume.get("from_step") and status == "COMPLETED" and "value" in old:
            value = old.get("value")  # nothing trained: the final weights, and their value, are unchanged
    if status in ("COMPLETED", "STOPPED"):
        record["value"] = float(value) if isinstance(value, (int, float)) else None
    if step is not None:
        record["step"] = int(step)
    if reason:
        record["reason"] = reason
    if error:
        record["error"] = error
    resumes = list(old.get("resumes") or [])
    if resume is not None:
        resumes.append({"overrides": [str(o) for o in resume["overrides"]], "from_step": resume.get("from_step"), "to_step": step})
    if resumes:
        record["resumes"] = resumes
    try:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(record), path)
        mark_recorded(out)
    except OSError as e:  # pragma: no cover - read-only or vanished run dir
        log.warning("could not write %s: %s", path, e)
    return path


#: Run dirs whose job_status.yaml was taken care of in this process (written, or left as it was
#: on purpose): JobReport and clean_errors leave them alone.
_RECORDED: set[str] = set()


def mark_recorded(out_dir: str | Path) -> None:
    """Note that ``<out_dir>/job_status.yaml`` is taken care of (see :func:`is_recorded`)."""
    _RECORDED.add(str(Path(out_dir).resolve()))


def is_recorded(out_dir: str | Path) -> bool:
    """Whether this process already wrote ``<out_dir>/job_status.yaml``, or left it as it was on
    purpose (a refused ``resume=`` keeps the run's record), so that nothing overwrites it."""
    return str(Path(out_dir).resolve()) in _RECORDED


class SweepJobFailed(CompactHydraException):
    """What a failed multirun job returns to a sweeper (Optuna's: the trial is recorded as FAIL)
    once :class:`JobReport` has reported it: a short message, no traceback."""


class _ReportedJobReturn(JobReturn):
    """A failed job's ``JobReturn`` whose error charlm has already reported in one line: reading
    ``return_value`` raises :class:`SweepJobFailed` without Hydra's "Error executing job with
    overrides" banner, or, where Hydra's BasicSweeper reads it after the batch to fail the whole
    multirun (``_exit_on_read``), exits with status 1 without a second report and traceback."""

    @property
    def return_value(self) -> Any:
        if self.status == JobStatus.COMPLETED:
            return self._return_value
        if getattr(self, "_exit_on_read", False):
            raise SystemExit(1)
        raise self._return_value

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


class _DropOptunaFailureLines(logging.Filter):
    """The Optuna sweeper logs "Failed experiment: <error>" for a failed trial, which
    :class:`JobReport` has already reported as ``job N FAILED (...)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed experiment:")


def _log_traceback_to_files(text: str) -> None:
    """Append ``text`` to the job's log file (Hydra's ``<run dir>/<task>.log``) only, not the console."""
    record = logging.LogRecord("charlm.sweeps", logging.ERROR, __file__, 0, "%s", (text,), None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def _distribution_kind(d: Any) -> str:
    """An Optuna distribution as the Hydra sweep syntax that makes it (``choice(...)``,
    ``interval(...)``, ``tag(log, interval(...))``, ``range(...)``)."""
    name = type(d).__name__
    if name == "CategoricalDistribution":
        return f"choice({', '.join(map(str, d.choices))})"
    interval = f"interval({d.low}, {d.high})" if hasattr(d, "low") else name
    if name.startswith("Int"):
        interval = f"int({interval})"
    if "Log" in name:
        return f"tag(log, {interval})"
    if name == "DiscreteUniformDistribution":
        return f"range({d.low}, {d.high}, step={d.q})"
    return interval if hasattr(d, "low") else name


def check_study_parameters(config: DictConfig) -> None:
    """Before an Optuna search adds trials to an existing study, check that every searched
    parameter keeps the kind (and, for ``choice``, the values) it has in the study's earlier
    trials; Optuna itself fails mid-search with a bare ``ValueError`` traceback.

    Raises:
        CharLMError: naming the parameter, the study's kind and this search's kind.
    """
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if sweeper is None or "optuna" not in str(sweeper.get("_target_", "")).lower() or not isinstance(storage, str):
        return
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        return  # a new study
    try:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    except ImportError:  # pragma: no cover - the sweeps extra is missing; Hydra says so
        return
    name = str(sweeper.get("study_name"))
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    searched, fixed = create_params_from_overrides(params + [str(o) for o in config.hydra.overrides.task])
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no such study in this storage yet
        return
    from optuna.distributions import check_distribution_compatibility

    seen: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        for key, dist in trial.distributions.items():
            seen.setdefault(key, dist)
    for key, new in searched.items():
        old = seen.get(key)
        if old is None or key in fixed:
            continue
        try:
            check_distribution_compatibility(old, new)
        except ValueError:
            raise CharLMError(
                f"{key}: the Optuna study '{name}' ({storage}) searches it as {_distribution_kind(old)}, this search as "
                f"{_distribution_kind(new)}; a study keeps each parameter's kind and choices. Search it as before, "
                f"or give this search its own study: hydra.sweeper.study_name={name}-2"
            ) from None


class JobReport(Callback):
    """Hydra callback (``hydra.callbacks``) for sweeps.

    * ``on_multirun_start``: creates the folder of a ``sqlite:///`` Optuna storage (SQLite does
      not create parent folders) and checks that an Optuna search keeps the kinds of the
      parameters already in its study (:func:`check_study_parameters`: an ``error:`` line, exit 2).
    * ``on_job_end``: in a multirun, reports a failed job in one line (``job N FAILED (...)``; its
      traceback goes to the job's log file only, and Hydra's own banner and traceback are left
      out) or an interrupted one (``INTERRUPTED``); writes ``<job dir>/job_status.yaml`` when the
      app did not (:func:`write_job_status`). Hydra's BasicLauncher runs the remaining jobs of the
      batch after a failure, then exits non-zero with the first failure.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl").addFilter(_DropOptunaFailureLines())
        try:
            check_study_parameters(config)
        except CharLMError as e:  # Hydra turns a callback's exception into a warning: stop here
            import sys

            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        out = Path(str(config.hydra.runtime.output_dir))
        overrides = list(job_return.overrides or [])
        # a single run has no job number, and reports its own errors (charlm.cli.common.clean_errors)
        multirun = is_multirun(config.hydra)
        err = job_return._return_value if job_return.status == JobStatus.FAILED else None
        interrupted = type(err).__name__ == "TrainingInterrupted"  # stopped by a signal, last.ckpt written
        error = f"{type(err).__name__}: {err}" if err is not None and not interrupted else None
        if multirun and interrupted:
            log.warning("job %s INTERRUPTED (%s): %s; resume with %s",
                        config.hydra.job.num, " ".join(overrides), err, command("charlm-train", resume=shown_path(out)))
        elif multirun and error:
            log.error("job %s FAILED (%s): %s; run dir %s", config.hydra.job.num, " ".join(overrides), error, shown_path(out))
            if not isinstance(err, CharLMError):
                _log_traceback_to_files(f"job {config.hydra.job.num}: " + "".join(traceback.format_exception(err)))
        if multirun and job_return.status == JobStatus.FAILED:
            job_return.__class__ = _ReportedJobReturn
            job_return._return_value = SweepJobFailed(f"job {config.hydra.job.num} failed: {error or err}")
            sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
            job_return._exit_on_read = sweeper.endswith("BasicSweeper")
        if is_recorded(out) or int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) > 0:
            return  # the app recorded the run itself (global rank 0 only)
        if interrupted:
            write_job_status(out, "INTERRUPTED", overrides, error=str(err), step=err.step)
        elif error:
            write_job_status(out, "FAILED", overrides, error=error)
        else:
            value = job_return._return_value
            write_job_status(out, job_return.status.name, overrides, value=float(value) if isinstance(value, (int, float)) else None)


def check_multirun_ddp(cfg: DictConfig) -> None:
    """Refuse a Hydra multirun whose jobs would launch DDP processes themselves.

    Lightning's subprocess launcher re-runs the command line for every extra rank, which in a
    multirun would start the whole sweep again. Jobs may use several devices when a launcher
    starts one process per device (SLURM via ``hydra/launcher=submitit_slurm`` with
    ``tasks_per_node`` = devices per node, or torchrun). The device count is resolved as the
    Trainer resolves it (:func:`~charlm.training.devices.resolve_num_devices`): ``trainer.devices=-1`` on a machine with
    two GPUs is two devices, ``"auto"`` on the CPU is one.

    Raises:
        CharLMError: in a multirun with more than one device per job and no external launcher,
            or with a device choice Lightning refuses.
    """
    if not is_multirun():
        return
    from charlm.training.devices import resolve_num_devices  # Lightning: only in a multirun

    n = resolve_num_devices(cfg)
    nodes = int(OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1)
    if n * nodes <= 1:
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return
    raise CharLMError(
        f"this multirun's jobs use {n * nodes} devices each, but no launcher starts one process per device "
        "(Lightning would re-run the whole sweep for every extra rank). Run the sweep with one device per job "
        "(trainer.devices=1), or launch it on SLURM with hydra/launcher=submitit_slurm and "
        "hydra.launcher.tasks_per_node=<devices per node> (see README, 'Resuming and scaling out')."
    )
