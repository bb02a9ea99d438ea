"""W&B dashboards: a real offline run written by charlm-train, read back from its .wandb file."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
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
    (before,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    second = run_cli("charlm.cli.train", [f"resume={run_dir}"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    # one folder holds the whole run (the first one is kept aside, out of the reach of wandb sync)
    (run,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / "wandb" / "superseded" / before.name).is_dir()
    assert run.name.rsplit("-", 1)[1] == before.name.rsplit("-", 1)[1], "the resumed run got a new W&B id"
    steps = [s for s, _ in _history_of(run)]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    assert gaps == {2} and steps[0] <= 2 and steps[-1] >= 18, f"the step axis has a gap or a duplicate: {steps}"


# ----------------------------------------------------------------------------- the whole run, once
class SigkillAt(L.Callback):
    """Test plugin (``+callbacks.sigkill._target_=test_wandb.SigkillAt``): SIGKILL this process
    right after optimizer step ``$CHARLM_TEST_SIGKILL_AT_STEP``, when that is set."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        at = os.environ.get(SIGKILL_ENV)
        if at and trainer.global_step == int(at):
            os.kill(os.getpid(), signal.SIGKILL)


SIGKILL_ENV = "CHARLM_TEST_SIGKILL_AT_STEP"
WHOLE = [*TINY_CLI, "logger=default", "trainer.max_steps=40", "trainer.log_every_n_steps=2",
         "callbacks.last_checkpoint.every_n_train_steps=25", "~callbacks.visualize"]
#: Keys whose values depend on the clock, not on the model.
CLOCK = {"train/tokens_per_sec", "_runtime", "_timestamp", "_step"}


def synced_history(run_dir: Path) -> list[dict]:
    """The history rows `wandb sync <run dir>/wandb/offline-run-*` (the README's command)
    uploads, in the order it uploads them: the folders of one run in order of their start time."""
    from sweep_helpers import read_wandb_records

    files = []
    for folder in (run_dir / "wandb").glob("offline-run-*"):
        (datastore,) = folder.glob("run-*.wandb")
        records = read_wandb_records(datastore)
        start = next((r.run.start_time.ToNanoseconds() for r in records if r.WhichOneof("record_type") == "run"), 0)
        files.append((start, folder, records))
    rows = []
    for _, folder, records in sorted(files, key=lambda f: f[0]):
        for r in records:
            if r.WhichOneof("record_type") == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                row["_folder"] = folder
                rows.append(row)
    return rows


def by_key(rows: list[dict]) -> dict[str, list]:
    """``{key: [(trainer/global_step, value), ...]}`` in upload order (values of clock keys left out,
    a table as its rows)."""
    out: dict[str, list] = {}
    for row in rows:
        tables = {k[: -len("/_type")] for k, v in row.items() if k.endswith("/_type") and v == "table-file"}
        for k, v in row.items():
            if k in ("_folder", "trainer/global_step") or k.startswith("_") or k.split("/")[0] in tables:
                continue
            out.setdefault(k, []).append((row["trainer/global_step"], None if k in CLOCK else v))
        for t in sorted(tables):
            data = json.loads((row["_folder"] / "files" / row[f"{t}/path"]).read_text(encoding="utf-8"))["data"]
            out.setdefault(t, []).append((row["trainer/global_step"], data))
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("whole")
    res = run_cli("charlm.cli.train", WHOLE, cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = list((cwd / "outputs" / "train" / "runs").iterdir())
    return run_dir


def assert_whole_run(run_dir: Path, uninterrupted: Path) -> None:
    reference = by_key(synced_history(uninterrupted))
    got = by_key(synced_history(run_dir))
    assert sorted(got) == sorted(reference)
    for key, ref in reference.items():
        steps, ref_steps = [s for s, _ in got[key]], [s for s, _ in ref]
        if key in CLOCK:  # a throughput needs a previous step of the same process: not at the first one after a resume
            assert steps == sorted(set(steps)) and set(steps) <= set(ref_steps) and len(steps) >= len(ref_steps) - 1, key
            continue
        assert steps == ref_steps, f"{key}: steps {steps} (each once, in order, none lost) != {ref_steps}"
        assert got[key] == ref, f"{key}: values differ from the uninterrupted run"
    (last_table,) = [v for s, v in got["samples"][-1:]]
    assert sorted({r[0] for r in last_table}) == [10, 20, 30, 40]  # the table holds every validation's samples
    # and samples.txt is the uninterrupted run's (no block written twice by the stopped process)
    assert (run_dir / "samples.txt").read_text(encoding="utf-8") == (uninterrupted / "samples.txt").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_and_resumed_syncs_each_step_once(tmp_path, monkeypatch, uninterrupted):
    here = Path(__file__).resolve()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here.parent), str(here.parents[1])]))  # the plugin
    monkeypatch.setenv(SIGKILL_ENV, "33")  # after the checkpoint of step 25, before the end (40)
    killed = run_cli("charlm.cli.train", [*WHOLE, f"+callbacks.sigkill._target_={__name__}.SigkillAt"], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    monkeypatch.delenv(SIGKILL_ENV)
    resumed = run_cli("charlm.cli.train", [f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_whole_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_resume_from_an_earlier_best_checkpoint_syncs_each_step_once(tmp_path, uninterrupted):
    first = run_cli("charlm.cli.train", WHOLE, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    (best20,) = (run_dir / "checkpoints").glob("step000020-*.ckpt")  # the best 3 are those of steps 20, 30, 40
    resumed = run_cli("charlm.cli.train", [f"resume={best20}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_whole_run(run_dir, uninterrupted)
