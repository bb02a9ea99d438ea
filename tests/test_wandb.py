"""W&B dashboards: a real offline run written by charlm-train, read back from its .wandb file."""

from __future__ import annotations

import json

import pytest
from sweep_helpers import TINY_CLI, read_wandb_run, run_cli


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("wandb")
    res = run_cli("charlm.cli.train", [*TINY_CLI, "logger=default", "logger.wandb.tags=[smoke]"], cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = list((cwd / "outputs" / "train" / "runs").iterdir())
    return run_dir, read_wandb_run(run_dir)


@pytest.mark.slow
def test_offline_run_has_metrics_on_the_step_axis(wandb_run):
    _, run = wandb_run
    keys = set().union(*run["history"])
    for k in ["train/loss", "val/loss", "val/bpc", "val/ppl", "train/grad_norm", "train/tokens_per_sec", "lr"]:
        assert k in keys, f"{k} missing from the W&B history ({sorted(keys)})"
    # every metric row carries Lightning's step axis (trainer/global_step)
    for row in run["history"]:
        if "val/bpc" in row or "train/loss" in row:
            assert "trainer/global_step" in row
    val_steps = [r["trainer/global_step"] for r in run["history"] if "val/bpc" in r]
    assert val_steps == sorted(val_steps) and len(val_steps) == 2


@pytest.mark.slow
def test_offline_run_has_config_summary_tags_and_name(wandb_run):
    run_dir, run = wandb_run
    cfg = run["config"]
    assert cfg["model"]["hidden_size"] == 32 and cfg["data"]["seq_len"] == 16
    assert cfg["num_parameters"] > 0
    s = run["summary"]
    assert s["num_parameters"] == cfg["num_parameters"]
    best = min(r["val/bpc"] for r in run["history"] if "val/bpc" in r)
    assert s["best/val_bpc"] == pytest.approx(best, rel=1e-5)
    assert {"smoke", "tinyshakespeare", "lstm"} <= set(run["tags"])
    assert "model.hidden_size=32" in run["name"]  # named by its overrides
    assert run["exit_code"] == 0


@pytest.mark.slow
def test_offline_run_has_samples_table_over_steps(wandb_run):
    _, run = wandb_run
    tables = [r for r in run["history"] if r.get("samples/_type") == "table-file"]
    assert len(tables) == 2  # one per validation
    last = run["files_dir"] / tables[-1]["samples/path"]
    data = json.loads(last.read_text(encoding="utf-8"))
    assert data["columns"] == ["step", "temperature", "text"]
    steps = sorted({row[0] for row in data["data"]})
    assert len(steps) == 2 and all(len(row[2]) >= 40 for row in data["data"])


def _history_of(offline_run_dir):
    """``[(step, row), ...]`` of one offline W&B run folder, rows holding ``train/loss``."""
    from sweep_helpers import read_wandb_records

    (datastore,) = offline_run_dir.glob("run-*.wandb")
    rows = []
    for r in read_wandb_records(datastore):
        if r.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            if "train/loss" in row:
                rows.append((row["trainer/global_step"], row))
    return rows


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run_without_gap_or_duplicate(tmp_path):
    """A run cut by stop_after_steps and resumed logs to the same W&B run id, and the step axis
    of the resumed part continues after the cut: no step is logged twice, none is missing."""
    args = [*TINY_CLI, "logger=default", "trainer.log_every_n_steps=2"]
    first = run_cli("charlm.cli.train", [*args, "stop_after_steps=10"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    second = run_cli("charlm.cli.train", [f"resume={run_dir}"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    ids = {p.name.rsplit("-", 1)[1] for p in runs}
    assert len(ids) == 1, f"the resumed run got a new W&B id: {runs}"
    before = [s for s, _ in _history_of(runs[0])]
    after = [s for s, _ in _history_of(runs[1])]
    assert before and after and max(before) < min(after)
    steps = before + after
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    assert gaps == {2}, f"the step axis has a gap or a duplicate: {steps}"
