"""charlm-report (charlm.cli.report): the command's errors and options (the report itself:
test_evaluation_report.py)."""

from __future__ import annotations

import pytest


def test_report_cli_prints_error_without_traceback(tmp_path, run_app):
    res = run_app("report", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("error: no runs under") and "Traceback" not in res.stderr


def test_report_options_are_checked_with_one_line_errors(tmp_path, capsys):
    from charlm.cli.report import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--no-such-flag"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: unrecognized arguments: --no-such-flag") and len(err.splitlines()) == 1
