"""Hydra multiruns through the real console app: one dir and one W&B run per job, failures
reported without stopping the other jobs; Optuna search stored in SQLite; overfit overlay."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf
from sweep_helpers import TINY_CLI, multirun_dirs, read_wandb_run, run_cli

from charlm.evaluation.report import build_report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``-m optimizer.lr=3e-3,1e30 model.hidden_size=32,48``: 4 jobs, the two with lr=1e30
    diverge (NaN gradient norm -> CharLMError)."""
    cwd = tmp_path_factory.mktemp("sweep")
    args = ["-m", "optimizer.lr=3e-3,1e30", *TINY_CLI, "model.hidden_size=32,48", "trainer.max_steps=10", "trainer.val_check_interval=5", "logger=default"]
    res = run_cli("charlm.cli.train", args, cwd)
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
def test_optuna_search_three_trials_stored_in_sqlite_and_continued(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    common = ["-m", *TINY_CLI, "logger=csv", "trainer.max_steps=10", "trainer.val_check_interval=5",
              "model.dropout=0.0"]  # plain values (hidden 32 from TINY_CLI) are fixed, not searched
    # grid over 3 learning rates: 3 trials, one of which (1e30) diverges
    res = run_cli("charlm.cli.train", [*common, "hparams_search=optuna_grid",
                                       "optimizer.lr=choice(1e-3,3e-3,1e30)"], tmp_path)
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
    res = run_cli("charlm.cli.train", [*common, "hparams_search=optuna", "hydra.sweeper.n_trials=1",
                                       "hydra.sweeper.study_name=charlm-tinyshakespeare-grid",
                                       "optimizer.lr=choice(1e-3,3e-3,1e30)"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="charlm-tinyshakespeare-grid", storage=f"sqlite:///{db}")
    assert len(study.trials) == 4 and study.trials[-1].state.name in ("COMPLETE", "FAIL")


@pytest.mark.slow
def test_debug_overfit_drives_the_train_loss_towards_zero(compose, tmp_path):
    from charlm.cli.train import train

    cfg = compose("train", tmp_path, ["debug=overfit", "model.hidden_size=64", "model.num_layers=1",
                                      "data.batch_size=4", "data.seq_len=16", "trainer.overfit_batches=1",
                                      "trainer.max_steps=120", "trainer.val_check_interval=60", "trainer.log_every_n_steps=10",
                                      "trainer.enable_model_summary=false", "~callbacks.rich_progress_bar", "callbacks.samples.length=0"])
    train(cfg)
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if r.get("train/loss")]
    first, last = float(rows[0]["train/loss"]), float(rows[-1]["train/loss"])
    assert last < 0.1 and last < first / 20, (first, last)


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


@pytest.mark.filterwarnings("ignore:.*is experimental")
def test_optuna_search_changing_a_parameter_kind_is_one_error_line(tmp_path):
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
    res = run_cli("charlm.cli.train", ["-m", "hparams_search=optuna", "optimizer.lr=choice(1e-3,3e-3)", *TINY_CLI], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: optimizer.lr: ") and "interval(0.0003, 0.01)" in line and "choice(0.001, 0.003)" in line
    assert "hydra.sweeper.study_name=" in line
    assert not (tmp_path / "outputs" / "train" / "multiruns").exists()  # no trial ran
    assert len(optuna.load_study(study_name="charlm-tinyshakespeare", storage=f"sqlite:///{db}").trials) == 1


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
