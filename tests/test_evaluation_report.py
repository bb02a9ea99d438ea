"""charlm.evaluation.report: a table of a sweep's jobs, their status and the overrides that differ (the
report of a real sweep is checked in test_sweeps.py::test_report_ranks_sweep_jobs)."""

from __future__ import annotations

import pytest

from charlm.errors import CharLMError
from charlm.evaluation.report import Job, build_report, varying_overrides


def test_varying_overrides_keeps_only_swept_keys(tmp_path):
    a = Job(tmp_path, "0", overrides=["model.hidden_size=32", "optimizer.lr=0.001", "data.seq_len=16"])
    b = Job(tmp_path, "1", overrides=["model.hidden_size=64", "optimizer.lr=0.001", "data.seq_len=16"])
    assert varying_overrides([a, b]) == [["model.hidden_size=32"], ["model.hidden_size=64"]]
    assert varying_overrides([a]) == [a.overrides]


def test_report_rejects_missing_or_empty_dirs(tmp_path):
    with pytest.raises(CharLMError, match="not a folder"):
        build_report(tmp_path / "nope")
    with pytest.raises(CharLMError, match="no runs under"):
        build_report(tmp_path)


def test_report_status_comes_from_job_status_and_a_run_without_one_is_unknown(tmp_path):
    """A run dir without job_status.yaml (killed outright, or still running) is UNKNOWN, not
    COMPLETED; a job_status.yaml's overrides (the run's own) win over .hydra/overrides.yaml,
    which a resume rewrites to its own command line; a STOPPED run is listed with its reason."""
    from omegaconf import OmegaConf

    def run_dir(name: str, overrides: list[str], status: dict | None) -> None:
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"seed": 1}), d / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
        (d / "csv").mkdir()
        (d / "csv" / "metrics.csv").write_text("step,train/loss,val/bpc\n4,3.0,\n4,,5.5\n")
        if status is not None:
            OmegaConf.save(OmegaConf.create(status), d / "job_status.yaml")

    run_dir("0_killed", ["model.hidden_size=32"], None)
    run_dir("1_stopped", ["resume=outputs/train/runs/x"], {"status": "STOPPED", "overrides": ["model.hidden_size=64"],
                                                            "value": 7.9, "step": 5, "reason": "stop_after_steps=5"})
    jobs = {j.name: j for j in build_report(tmp_path, plot=False)}
    assert jobs["0_killed"].status == "UNKNOWN" and jobs["1_stopped"].status == "STOPPED"
    assert jobs["1_stopped"].overrides == ["model.hidden_size=64"] and jobs["1_stopped"].steps == 5
    md = (tmp_path / "report.md").read_text()
    assert "- `1_stopped` STOPPED: stop_after_steps=5, at step 5" in md
    assert "- `0_killed` UNKNOWN: no job_status.yaml" in md and "resume=" not in md
