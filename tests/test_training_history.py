"""charlm.training.history: a resumed run's logs hold the whole run, each step once: its W&B run
(offline, read back from its .wandb files) continues under the same id, and what ``wandb sync``
uploads equals the run never stopped, after a SIGKILL between checkpoints or a resume from an
earlier best checkpoint."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import CLI_TRAIN
from plugins import SIGKILL_ENV


def _history_of(offline_run_dir):
    """``[(step, row), ...]`` of one offline W&B run folder, rows holding ``train/loss``."""
    from wandb_files import read_wandb_records

    (datastore,) = offline_run_dir.glob("run-*.wandb")
    rows = []
    for r in read_wandb_records(datastore):
        if r.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            if "train/loss" in row:
                rows.append((row["trainer/global_step"], row))
    return rows


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run_without_gap_or_duplicate(tmp_path, run_app):
    """A run cut by stop_after_steps and resumed logs to the same W&B run id, and the step axis
    of the resumed part continues after the cut: no step is logged twice, none is missing."""
    args = [*CLI_TRAIN, "logger=default", "trainer.log_every_n_steps=2"]
    first = run_app("train", *args, "stop_after_steps=10", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    (before,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    second = run_app("train", f"resume={run_dir}", cwd=tmp_path)
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
#: A 40-step run logged to W&B every 2 steps, last.ckpt at step 25 (and at the end).
WHOLE = [*CLI_TRAIN, "logger=default", "trainer.max_steps=40", "trainer.log_every_n_steps=2",
         "callbacks.last_checkpoint.every_n_train_steps=25", "~callbacks.visualize"]


#: Keys whose values depend on the clock, not on the model.
CLOCK = {"train/tokens_per_sec", "_runtime", "_timestamp", "_step"}


def synced_history(run_dir: Path) -> list[dict]:
    """The history rows `wandb sync <run dir>/wandb/offline-run-*` (the README's command)
    uploads, in the order it uploads them: the folders of one run in order of their start time."""
    from wandb_files import read_wandb_records

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
def uninterrupted(tmp_path_factory, run_app):
    cwd = tmp_path_factory.mktemp("whole")
    res = run_app("train", *WHOLE, cwd=cwd)
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
def test_a_run_killed_between_checkpoints_and_resumed_syncs_each_step_once(tmp_path, uninterrupted, run_app):
    killed = run_app("train", *WHOLE, "+callbacks.sigkill._target_=plugins.SigkillAt", cwd=tmp_path, plugins=True,
                     env={SIGKILL_ENV: "33"})  # after the checkpoint of step 25, before the end (40)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    resumed = run_app("train", f"resume={run_dir}", cwd=tmp_path, plugins=True)  # without the variable: no kill
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_whole_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_resume_from_an_earlier_best_checkpoint_syncs_each_step_once(tmp_path, uninterrupted, run_app):
    first = run_app("train", *WHOLE, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    (best20,) = (run_dir / "checkpoints").glob("step000020-*.ckpt")  # the best 3 are those of steps 20, 30, 40
    resumed = run_app("train", f"resume={best20}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_whole_run(run_dir, uninterrupted)
