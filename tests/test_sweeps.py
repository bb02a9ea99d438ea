"""charlm.sweeps: Hydra multiruns through the real console app (one dir, one W&B run and one
job_status.yaml per job, failures reported in one line without stopping the other jobs), the W&B
names of jobs, the Optuna search stored in SQLite, the guard against multirun + DDP, and the
job_status.yaml of every run, single ones included."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from charlm.cli.train import train
from charlm.errors import CharLMError
from charlm.evaluation.report import build_report
from conftest import CLI_TRAIN, resumable_train
from wandb_files import read_wandb_run


def multirun_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "outputs" / "train" / "multiruns").iterdir())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, run_app):
    """``-m optimizer.lr=3e-3,1e30 model.hidden_size=32,48``: 4 jobs, the two with lr=1e30
    diverge (NaN gradient norm -> CharLMError)."""
    cwd = tmp_path_factory.mktemp("sweep")
    args = ["-m", "optimizer.lr=3e-3,1e30", *CLI_TRAIN, "model.hidden_size=32,48", "trainer.max_steps=10", "trainer.val_check_interval=5", "logger=default"]
    res = run_app("train", *args, cwd=cwd)
    (root,) = multirun_dirs(cwd)
    return res, root


@pytest.mark.slow
def test_sweep_runs_every_job_in_its_own_dir_and_reports_failures(sweep):
    res, root = sweep
    assert res.returncode != 0  # Hydra re-raises the first failure after the whole batch ran
    jobs = sorted(p for p in root.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1", "2", "3"]
    status = {p.name: OmegaConf.load(p / "job_status.yaml") for p in jobs}
    failed = [n for n, s in status.items() if s.status == "FAILED"]
    done = [n for n, s in status.items() if s.status == "COMPLETED"]
    assert len(failed) == 2 and all("optimizer.lr=1e+30" in status[n].overrides for n in failed)
    assert len(done) == 2 and all(math.isfinite(status[n].value) for n in done)
    assert all("non-finite" in status[n].error and "at step" in status[n].error for n in failed)
    # one clean line per failed job, naming it; no Hydra banner or traceback after it
    assert res.stderr.count(" FAILED (") == 2 and "non-finite" in res.stderr
    assert "Error executing job" not in res.stderr and "Traceback" not in res.stderr
    assert res.returncode == 1


@pytest.mark.slow
def test_sweep_jobs_are_separate_finished_wandb_runs_in_one_group(sweep):
    _, root = sweep
    jobs = [p for p in sorted(root.iterdir()) if p.is_dir()]
    runs = {p.name: read_wandb_run(p) for p in jobs}
    diverged = {p.name: "optimizer.lr=1e+30" in OmegaConf.load(p / "job_status.yaml").overrides for p in jobs}
    assert len({r["name"] for r in runs.values()}) == 4
    assert {r["group"] for r in runs.values()} == {f"train/{root.name}"}
    for name, r in runs.items():
        assert "sweep" in r["tags"]
        assert "model.hidden_size=" in r["name"] and "optimizer.lr=" in r["name"]  # named by its overrides
        assert r["exit_code"] == (1 if diverged[name] else 0), name


@pytest.mark.slow
def test_report_ranks_sweep_jobs(sweep, tmp_path):
    _, root = sweep
    jobs = build_report(root, tmp_path)
    assert [j.status for j in jobs] == ["COMPLETED", "COMPLETED", "FAILED", "FAILED"]
    assert jobs[0].best_val_bpc <= jobs[1].best_val_bpc
    md = (tmp_path / "report.md").read_text()
    assert "optimizer.lr=1e+30 model.hidden_size=32" in md or "model.hidden_size=32 optimizer.lr=1e+30" in md
    assert "non-finite" in md and "at step" in md


@pytest.mark.slow
def test_optuna_search_three_trials_stored_in_sqlite_and_continued(tmp_path, run_app):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    common = ["-m", *CLI_TRAIN, "logger=csv", "trainer.max_steps=10", "trainer.val_check_interval=5",
              "model.dropout=0.0"]  # plain values (hidden 32 from CLI_TRAIN) are fixed, not searched
    # grid over 3 learning rates: 3 trials, one of which (1e30) diverges
    res = run_app("train", *common, "hparams_search=optuna_grid", "optimizer.lr=choice(1e-3,3e-3,1e30)", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "setup plugin" not in res.stdout + res.stderr  # no alembic chatter
    assert "Error executing job" not in res.stderr and "Failed experiment" not in res.stdout + res.stderr
    assert (res.stdout + res.stderr).count(" FAILED (") == 1  # the diverging trial, in one line
    db = tmp_path / "outputs" / "train" / "optuna" / "charlm-tinyshakespeare-grid.db"
    assert db.is_file()
    study = optuna.load_study(study_name="charlm-tinyshakespeare-grid", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3
    states = {t.params["optimizer.lr"]: t.state.name for t in study.trials}
    assert states == {1e-3: "COMPLETE", 3e-3: "COMPLETE", 1e30: "FAIL"}
    assert math.isfinite(study.best_value) and study.best_params["optimizer.lr"] in (1e-3, 3e-3)
    (root,) = multirun_dirs(tmp_path)
    assert OmegaConf.load(root / "optimization_results.yaml").best_value == pytest.approx(study.best_value)
    # a later search on the same study (same parameter kinds) adds to it: TPE, one more trial
    res = run_app("train", *common, "hparams_search=optuna", "hydra.sweeper.n_trials=1",
                  "hydra.sweeper.study_name=charlm-tinyshakespeare-grid", "optimizer.lr=choice(1e-3,3e-3,1e30)", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="charlm-tinyshakespeare-grid", storage=f"sqlite:///{db}")
    assert len(study.trials) == 4 and study.trials[-1].state.name in ("COMPLETE", "FAIL")


@pytest.mark.filterwarnings("ignore:.*is experimental")
def test_optuna_search_changing_a_parameter_kind_is_one_error_line(tmp_path, run_app):
    """A study that searched optimizer.lr as a log interval, searched again with choice(...): one
    `error:` line naming the parameter and both kinds, exit 2, before any trial (Optuna's own
    ValueError came mid-search with a traceback)."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from optuna.distributions import LogUniformDistribution

    db = tmp_path / "outputs" / "train" / "optuna" / "charlm-tinyshakespeare.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="charlm-tinyshakespeare", storage=f"sqlite:///{db}")
    study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 1e-3}, value=5.0,
                                              distributions={"optimizer.lr": LogUniformDistribution(3e-4, 1e-2)}))
    res = run_app("train", "-m", "hparams_search=optuna", "optimizer.lr=choice(1e-3,3e-3)", *CLI_TRAIN, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: optimizer.lr: ") and "interval(0.0003, 0.01)" in line and "choice(0.001, 0.003)" in line
    assert "hydra.sweeper.study_name=" in line
    assert not (tmp_path / "outputs" / "train" / "multiruns").exists()  # no trial ran
    assert len(optuna.load_study(study_name="charlm-tinyshakespeare", storage=f"sqlite:///{db}").trials) == 1


def test_wandb_runs_of_a_seed_only_sweep_have_distinct_names_holding_the_swept_key(compose, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from charlm.sweeps import name_wandb_run

    names = []
    for num, seed in enumerate([1, 2]):
        overrides = [f"seed={seed}", "trainer.max_steps=10"]
        cfg = compose("train", tmp_path / str(num), overrides)
        with read_write(cfg.hydra), open_dict(cfg.hydra):  # as Hydra sets a multirun job (override_dirname leaves seed out)
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = num
            cfg.hydra.overrides.task = overrides
            cfg.hydra.job.override_dirname = "trainer.max_steps=10"
        HydraConfig.instance().set_config(cfg)
        name_wandb_run(cfg)
        names.append(cfg.logger.wandb.name)
    assert names == ["seed=1,trainer.max_steps=10", "seed=2,trainer.max_steps=10"]


# ---------------------------------------------------------------------------------- job_status.yaml
def test_job_report_records_a_signal_stopped_job_as_interrupted(tmp_path):
    """A job stopped by SIGINT/SIGTERM (train() raises TrainingInterrupted after writing
    last.ckpt) is recorded as INTERRUPTED, not COMPLETED or a generic failure."""
    from hydra.core.utils import JobReturn, JobStatus

    from charlm.job_status import JOB_STATUS_FILE
    from charlm.sweeps import JobReport
    from charlm.errors import TrainingInterrupted

    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}, "job": {"num": 3}}})
    ret = JobReturn(overrides=["model.hidden_size=32"], status=JobStatus.FAILED,
                    _return_value=TrainingInterrupted("SIGINT", 17, {"val/loss": 2.0}))
    JobReport().on_job_end(config, ret)
    status = OmegaConf.load(tmp_path / JOB_STATUS_FILE)
    assert status.status == "INTERRUPTED" and "SIGINT at step 17" in status.error
    assert TrainingInterrupted("SIGINT", 1).exit_code == 130 and TrainingInterrupted("SIGTERM", 1).exit_code == 143


@pytest.mark.parametrize("sweeper", ["BasicSweeper", "OptunaSweeper"])
def test_job_report_reports_a_failed_job_in_one_line_and_its_traceback_to_the_log(tmp_path, capsys, sweeper):
    """A multirun job that raised: one `job N FAILED (...)` line; the traceback goes to the job's
    log file only; Hydra's "Error executing job" banner and traceback are left out (BasicSweeper:
    exit 1 when it re-raises the first failure; Optuna: a short error that marks the trial FAIL)."""
    import logging

    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    from charlm.job_status import JOB_STATUS_FILE
    from charlm.sweeps import JobReport, SweepJobFailed

    def boom():
        raise ValueError("a bug, not bad input")

    try:
        boom()
    except ValueError as e:
        err = e
    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}, "job": {"num": 1},
                                         "mode": RunMode.MULTIRUN, "sweeper": {"_target_": f"x.{sweeper}"}}})
    ret = JobReturn(overrides=["optimizer.lr=1e+30"], status=JobStatus.FAILED, _return_value=err)
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        JobReport().on_job_end(config, ret)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    log_text = (tmp_path / "train.log").read_text()
    assert "Traceback" in log_text and "in boom" in log_text and "a bug, not bad input" in log_text
    status = OmegaConf.load(tmp_path / JOB_STATUS_FILE)
    assert status.status == "FAILED" and status.error == "ValueError: a bug, not bad input"
    if sweeper == "BasicSweeper":
        with pytest.raises(SystemExit) as e:
            ret.return_value
        assert e.value.code == 1
    else:
        with pytest.raises(SweepJobFailed, match="job 1 failed: ValueError: a bug"):
            ret.return_value
    assert "Error executing job" not in capsys.readouterr().err


def test_job_report_in_a_single_run_records_a_failure_without_a_warning(compose, tmp_path, caplog):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import open_dict, read_write

    from charlm.sweeps import JobReport

    cfg = compose("train", tmp_path / "run", ["seed=3"])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = "???"  # a single run has no job number (reading it raised MissingMandatoryValue)
    ret = JobReturn()
    ret.status, ret.return_value, ret.overrides = JobStatus.FAILED, RuntimeError("boom"), ["seed=3"]
    JobReport().on_job_end(config=cfg, job_return=ret)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    status = OmegaConf.load(tmp_path / "run" / "job_status.yaml")
    assert status.status == "FAILED" and status.error == "RuntimeError: boom" and list(status.overrides) == ["seed=3"]


def _status(run: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run / "job_status.yaml"))


@pytest.mark.slow
def test_job_status_of_a_stopped_then_resumed_run_keeps_its_overrides_and_value(tmp_path, tiny_corpus, run_app):
    """stop_after_steps before max_steps is STOPPED (step, reason); resuming it to the end is
    COMPLETED with the run's own overrides (not `resume=...`), the resume noted; resuming the
    finished run again trains nothing and keeps the value of its final weights; a refused resume
    leaves the record alone. charlm-report shows each status."""
    from charlm.evaluation.report import build_report
    from charlm.training.run_config import merge_overrides

    run = tmp_path / "run"
    own = resumable_train(tiny_corpus, 20)
    r = run_app("train", f"hydra.run.dir={run}", *own, "stop_after_steps=5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st = _status(run)
    assert st["status"] == "STOPPED" and st["step"] == 5 and "stop_after_steps=5" in st["reason"]
    assert st["overrides"] == [*own, "stop_after_steps=5"] and "resumes" not in st
    (job,) = build_report(run, tmp_path / "rep1", plot=False)
    assert job.status == "STOPPED" and "at step 5" in (tmp_path / "rep1" / "report.md").read_text()

    r = run_app("train", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    done = _status(run)
    assert done["status"] == "COMPLETED" and done["step"] == 20 and math.isfinite(done["value"])
    own = merge_overrides(own)  # (the list repeats keys: the last value counts, as in Hydra)
    assert done["overrides"] == own  # the run's own, without one invocation's stop_after_steps or resume=
    assert done["resumes"] == [{"overrides": [f"resume={run}"], "from_step": 5, "to_step": 20}]

    r = run_app("train", f"resume={run}", cwd=tmp_path)  # finished: nothing to train
    assert r.returncode == 0, r.stderr[-3000:]
    again = _status(run)
    assert again["value"] == done["value"] and again["overrides"] == own and again["status"] == "COMPLETED"
    assert len(again["resumes"]) == 2 and again["resumes"][1]["from_step"] == again["resumes"][1]["to_step"] == 20

    r = run_app("train", f"resume={run}", "optimizer.lr=0.5", cwd=tmp_path)  # refused: the record stands
    assert r.returncode == 2 and _status(run) == again
    (job,) = build_report(run, tmp_path / "rep2", plot=False)
    assert job.status == "COMPLETED" and job.overrides == own and job.steps == 20


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_an_interrupted_single_run_is_recorded_interrupted(tmp_path, tiny_corpus, sig, run_app):
    """Ctrl-C or SIGTERM (sent by the test's own callback right after step 3) ends a single run
    as INTERRUPTED, with the step, and charlm-report says so (it listed it as COMPLETED)."""
    from charlm.evaluation.report import build_report

    run = tmp_path / "run"
    r = run_app("train", f"hydra.run.dir={run}", *resumable_train(tiny_corpus, 1000),
                "+callbacks.signal._target_=plugins.SignalAtStep", "+callbacks.signal.step=3",
                f"+callbacks.signal.signum={sig}", cwd=tmp_path, plugins=True)
    assert r.returncode == 128 + getattr(signal, sig), r.stderr[-3000:]
    st = _status(run)
    assert st["status"] == "INTERRUPTED" and st["step"] == 3 and f"{sig} at step 3" in st["error"]
    (job,) = build_report(run, tmp_path / "rep", plot=False)
    assert job.status == "INTERRUPTED" and f"{sig} at step 3" in (tmp_path / "rep" / "report.md").read_text()


def test_a_failed_single_run_is_recorded_and_errors_name_the_option_given(tmp_path, run_app):
    """`ckpt=nope.ckpt` says ckpt (it said `resume=nope.ckpt` and suggested dropping resume=), and
    the run dir's job_status.yaml says FAILED with the error."""
    run = tmp_path / "run"
    r = run_app("train", f"hydra.run.dir={run}", "ckpt=nope.ckpt", "logger=csv", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ckpt=nope.ckpt: ") and "resume" not in r.stderr and "Traceback" not in r.stderr
    st = _status(run)
    assert st["status"] == "FAILED" and st["error"].startswith("CharLMError: ckpt=nope.ckpt")


def test_stop_after_steps_before_max_steps_is_recorded_stopped(compose, tmp_path, tiny_corpus):
    """A run cut by stop_after_steps is STOPPED with its step and reason (it was COMPLETED); one
    whose stop_after_steps is not before max_steps simply completes."""
    from charlm.cli.train import record_status
    from charlm.sweeps import objective

    for stop, steps, status in [(4, 12, "STOPPED"), (12, 12, "COMPLETED")]:
        run = tmp_path / f"run{stop}"
        cfg = compose("train", run, resumable_train(tiny_corpus, steps, f"stop_after_steps={stop}"))
        record: dict = {}
        record_status(cfg, record, value=objective(train(cfg, record)))
        st = _status(run)
        assert st["status"] == status and st["step"] == stop, st
        assert ("reason" in st) == (status == "STOPPED")
        if status == "STOPPED":
            assert st["reason"] == "stop_after_steps=4 (trainer.max_steps=12)"


# ---------------------------------------------------------------------------------- multirun and DDP
def _as_multirun(cfg):
    """Mark a composed config as a job of a Hydra multirun (what ``charlm-train -m`` gives)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_multirun_guard_counts_devices_as_lightning_does(compose, tmp_path, monkeypatch):
    from charlm.sweeps import check_multirun_ddp
    from charlm.training.devices import resolve_num_devices

    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", "GROUP_RANK"):
        monkeypatch.delenv(var, raising=False)  # no external launcher
    # one CPU device: "auto" resolves to CPUAccelerator.auto_device_count() = 1, so the sweep runs
    for devices in ("auto", "1", 1):
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=cpu", f"trainer.devices={devices}"]))
        check_multirun_ddp(cfg)  # main refused "auto" (it counted any string as 2)
        assert resolve_num_devices(cfg) == 1
    # two CPU processes (as a string too): refused, naming the count
    for devices in ("2", "'2'"):
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=ddp_cpu", f"trainer.devices={devices}"]))
        with pytest.raises(CharLMError, match="jobs use 2 devices each"):
            check_multirun_ddp(cfg)
    # -1 is not let through: Lightning refuses it on the CPU (on GPUs it means all of them)
    cfg = _as_multirun(compose("train", tmp_path, ["trainer=cpu", "trainer.devices=-1"]))
    with pytest.raises(CharLMError, match=r"trainer.devices=-1 with trainer.accelerator='cpu'.*int > 0"):
        check_multirun_ddp(cfg)  # main let it through (n = -1)
    if not torch.cuda.is_available():
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=ddp"]))  # accelerator gpu, devices -1
        with pytest.raises(CharLMError, match="trainer.devices=-1 with trainer.accelerator='gpu'"):
            check_multirun_ddp(cfg)
