"""charlm-report: error paths and override columns (the report of a real sweep is checked in
test_sweeps.py::test_report_ranks_sweep_jobs)."""

from __future__ import annotations

import pytest
from sweep_helpers import run_cli

from charlm.errors import CharLMError
from charlm.report import Job, build_report, varying_overrides


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


def test_report_cli_prints_error_without_traceback(tmp_path):
    res = run_cli("charlm.report", [str(tmp_path)], tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("error: no runs under") and "Traceback" not in res.stderr


def test_report_options_are_checked_with_one_line_errors(tmp_path, capsys):
    from charlm.report import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--no-such-flag"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: unrecognized arguments: --no-such-flag") and len(err.splitlines()) == 1
