"""charlm-ngram (charlm.cli.ngram): the n-gram baseline's command, its output and its options."""

from __future__ import annotations

import json

import pytest

from conftest import assert_user_error


def test_charlm_ngram_command(tmp_path, small_corpus, run_app):
    env = {"PYTHONUNBUFFERED": "1"}
    r = run_app("ngram", "data=file", f"data.path={small_corpus}", "order=5", "crlf=true", f"hydra.run.dir={tmp_path / 'run'}",
                env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["order"] == 5 and m["smoothing"] == "mkn" and m["train_chars"] == 54_000
    for split in ("val", "test"):
        assert 1.0 < m[split]["loss"] < 4.0 and m[split]["chars"] == 2_999
        assert f"[{split}]: loss {m[split]['loss']:.4f} nats/char | bpc {m[split]['bpc']:.4f}" in r.stdout
        assert m[split]["crlf"]["loss"] < m[split]["loss"] and m[split]["crlf"]["chars"] > 2_999
    bad = run_app("ngram", "data=file", f"data.path={small_corpus}", "order=0", f"hydra.run.dir={tmp_path / 'bad'}", env=env)
    assert_user_error(bad, "error: order=0")


@pytest.mark.parametrize("arg,message", [
    ("order=2.5", "error: order=2.5 must be an integer >= 1"),
    ("discount=3", "error: discount=3 must be a finite number > 0 and <= 1"),
    ("smoothing=wb", "error: smoothing=wb must be one of mkn, kn"),
])
def test_charlm_ngram_options_are_checked(tmp_path, small_corpus, arg, message, run_app):
    r = run_app("ngram", "data=file", f"data.path={small_corpus}", arg, f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr[-2000:]


def test_charlm_ngram_help_lists_its_own_options(run_app):
    r = run_app("ngram", "--help", timeout=120)
    assert r.returncode == 0 and "charlm-ngram:" in r.stdout and "order: 20" in r.stdout
    assert "== Config groups" not in r.stdout and "optimizer" not in r.stdout
