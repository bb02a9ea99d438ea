"""charlm.training.run_dir: a new run never goes into a dir that holds a run."""

from __future__ import annotations

import pytest

from charlm.cli.train import train
from charlm.errors import CharLMError
from conftest import resumable_train


def test_a_new_run_into_a_dir_holding_a_run_is_refused_and_the_first_run_kept(compose, tmp_path, tiny_corpus, run_app):
    run = tmp_path / "run"
    train(compose("train", run, resumable_train(tiny_corpus, 10)))
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    with pytest.raises(CharLMError) as e:
        train(compose("train", run, resumable_train(tiny_corpus, 10, "optimizer.lr=0.01")))
    assert f"resume={run}" in str(e.value) and "another dir" in str(e.value) and "checkpoints/last.ckpt" in str(e.value)
    after = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before  # nothing of the first run was replaced, deleted or added to
    # on the command line: exit status 2 before Hydra writes anything into the dir
    cli = run.parent / "cli"
    p = run_app("train", f"hydra.run.dir={cli}", *resumable_train(tiny_corpus, 4), cwd=tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    hydra_files = {q: q.read_bytes() for q in cli.rglob("*") if q.is_file() and q.suffix in (".yaml", ".log")}
    p = run_app("train", f"hydra.run.dir={cli}", *resumable_train(tiny_corpus, 4, "seed=7"), cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 2, out[-3000:]
    assert "Traceback" not in out and f"error: {cli} already holds a training run" in out and f"resume={cli}" in out
    assert {q: q.read_bytes() for q in hydra_files} == hydra_files
    assert not list((cli / "checkpoints").glob("last-v*"))
