"""Exact resume, stop_after_steps, resume refusals, init_from, signals and SIGKILL (issue 3)."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charlm.cli.train import train
from charlm.errors import CharLMError
from conftest import FAST_TRAIN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared machine, thread over-subscription makes these
    tiny runs 10x slower (and results do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_corpus(tmp_path, shakespeare_path) -> Path:
    """6,000 characters: with 8 streams x 32 characters an epoch is 21 training batches."""
    p = tmp_path / "tiny.txt"
    p.write_text(shakespeare_path.read_text(encoding="utf-8")[:6_000], encoding="utf-8")
    return p


def _overrides(corpus: Path, steps: int, *extra: str) -> list[str]:
    return FAST_TRAIN + [
        f"data.path={corpus}",
        "data.splits=[0.9,0.1,0.0]",
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2",
        "callbacks.last_checkpoint.every_n_train_steps=7",
        "model.dropout=0.2",  # the RNG state must be restored for dropout masks to match
        *extra,
    ]


def train_losses(run_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` from a run's CSV log (the step column is Lightning's logging step)."""
    out: dict[int, float] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                step = int(row["step"])
                assert step not in out, f"step {step} logged twice"
                out[step] = float(row["train/loss"])
    return out


def params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_params(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"{k} differs"


@pytest.mark.parametrize("stop", [9, 21, 26], ids=["mid-epoch", "epoch-end", "second-epoch"])
def test_stopped_and_resumed_equals_uninterrupted(compose, tmp_path, tiny_corpus, stop):
    total = 30  # an epoch is 21 batches: the runs cross an epoch boundary
    full = tmp_path / "full"
    train(compose("train", full, _overrides(tiny_corpus, total)))

    cut = tmp_path / "cut"
    train(compose("train", cut, _overrides(tiny_corpus, total, f"stop_after_steps={stop}")))
    ck = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == stop
    # the resumed run writes into the original run dir, whatever output dir this invocation got
    train(compose("train", tmp_path / "elsewhere", [f"resume={cut}"]))

    assert_same_params(full, cut)
    lf, lc = train_losses(full), train_losses(cut)
    assert sorted(lc) == sorted(lf) and len(lf) == total
    assert lc == lf  # identical floats at every step
    assert not (tmp_path / "elsewhere" / "checkpoints").exists()


def test_resume_refuses_changes_and_allows_extension(compose, tmp_path, tiny_corpus, caplog):
    run = tmp_path / "run"
    train(compose("train", run, _overrides(tiny_corpus, 12, "stop_after_steps=6")))
    with pytest.raises(CharLMError) as e:
        train(compose("train", tmp_path / "x", [f"resume={run}", "optimizer.lr=0.01", "data.seq_len=16"]))
    assert "optimizer.lr: " in str(e.value) and "-> 0.01" in str(e.value) and "data.seq_len: 32 -> 16" in str(e.value)
    assert "allow_changes=true" in str(e.value)
    caplog.set_level("INFO", logger="charlm")
    train(compose("train", tmp_path / "x", [f"resume={run}", "trainer.max_steps=16"]))
    assert "trainer.max_steps: 12 -> 16" in caplog.text and "spans 16 steps instead of 12" in caplog.text
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16


def test_resume_from_an_earlier_best_checkpoint_moves_a_newer_last_ckpt_aside(compose, tmp_path, tiny_corpus, caplog):
    run = tmp_path / "run"
    train(compose("train", run, _overrides(tiny_corpus, 20)))  # best-k at steps 10 and 20, last.ckpt at 20
    ckdir = run / "checkpoints"
    best10 = next(ckdir.glob("step000010-*.ckpt"))
    last_bytes = (ckdir / "last.ckpt").read_bytes()
    with caplog.at_level("WARNING"):
        train(compose("train", tmp_path / "x", [f"resume={best10}", "trainer.max_steps=12"]))
    aside = ckdir / "last-step20.ckpt"
    assert aside.read_bytes() == last_bytes  # the newer checkpoint is kept, untouched
    assert "step 10" in caplog.text and "newer (step 20)" in caplog.text and str(aside) in caplog.text
    assert torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"] == 12


def test_resume_without_checkpoint_is_an_error(compose, tmp_path, tiny_corpus):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharLMError, match="no checkpoint found"):
        train(compose("train", tmp_path / "x", [f"resume={tmp_path / 'empty'}"]))
    with pytest.raises(CharLMError, match="does not exist|no such"):
        train(compose("train", tmp_path / "y", _overrides(tiny_corpus, 4, f"ckpt_path={tmp_path / 'nope.ckpt'}")))


def test_init_from_weights_only_and_vocab_check(compose, tmp_path, tiny_corpus, shared_data):
    src = tmp_path / "src"
    train(compose("train", src, _overrides(tiny_corpus, 5)))
    w = params(src)
    new = tmp_path / "new"
    # a new run: its own step counter, optimizer and schedule; weights start from the checkpoint
    train(compose("train", new, _overrides(tiny_corpus, 3, f"init_from={src}", "optimizer.lr=0")))
    ck = torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 3
    for k, v in w.items():
        assert torch.equal(v, ck["state_dict"][k]), k  # lr 0: the weights are exactly the source's
    names = shared_data / "names" / "names.txt"
    with pytest.raises(CharLMError, match="vocabulary differs.*only in the checkpoint"):
        train(compose("train", tmp_path / "bad", _overrides(names, 3, f"init_from={src}")))


def _cli(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "charlm.cli.train", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_resumable_checkpoint(tmp_path, tiny_corpus, sig):
    run = tmp_path / "run"
    proc = _cli(run, *_overrides(tiny_corpus, 100000, "callbacks.last_checkpoint.every_n_train_steps=100000"))
    _wait_for(run / "csv" / "metrics.csv", proc)  # training is under way
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] > 0, out[-2000:]
    assert f"resume={run.name}" in out  # printed relative to the current directory (run's parent)
    # an interrupted run is not a finished one: 128 + signal number, as shells report, and says so
    assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:])
    assert f"training interrupted at step {ck['global_step']:,} ({sig.name})" in out and "training finished" not in out
    assert f"resume it:   charlm-train resume={run.name}" in out


@pytest.mark.slow
def test_sigkill_while_saving_keeps_previous_checkpoint(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    ckdir = run / "checkpoints"
    # a checkpoint every step: kill as soon as a temporary file of a write exists
    proc = _cli(run, *_overrides(tiny_corpus, 100000, "callbacks.last_checkpoint.every_n_train_steps=1",
                                 "model.hidden_size=256"))
    t0 = time.time()
    killed_during_write = False
    while time.time() - t0 < 120 and proc.poll() is None:
        if (ckdir / "last.ckpt").exists() and any(ckdir.glob(".last.ckpt.*.tmp")):
            proc.kill()
            killed_during_write = True
            break
        time.sleep(0.002)
    if not killed_during_write:
        proc.kill()
    proc.wait(timeout=60)
    step = torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"]  # still loadable
    assert step > 0
    # resuming loses at most the steps since that checkpoint
    p = _cli(tmp_path / "again", f"resume={run}", f"trainer.max_steps={step + 2}")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"] == step + 2


def test_runs_from_before_the_regularisers_resume_without_a_change():
    from charlm.training.resume import config_changes

    data = {"batch_size": 8}
    old = {"data": data, "model": {"hidden_size": 64, "dropout": 0.1}}
    new = {"data": data, "model": {"hidden_size": 64, "dropout": 0.1, "weight_drop": 0.0, "hidden_dropout": 0.0}}
    assert config_changes(old, new) == ([], [])
    changed, _ = config_changes(old, {"data": data, "model": {**new["model"], "weight_drop": 0.5}})
    assert changed == ["model.weight_drop: '<unset>' -> 0.5"]


# ---------------------------------------------------------------------- checkpoint bookkeeping
def test_a_new_run_into_a_dir_holding_a_run_is_refused_and_the_first_run_kept(compose, tmp_path, tiny_corpus):
    run = tmp_path / "run"
    train(compose("train", run, _overrides(tiny_corpus, 10)))
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    with pytest.raises(CharLMError) as e:
        train(compose("train", run, _overrides(tiny_corpus, 10, "optimizer.lr=0.01")))
    assert f"resume={run}" in str(e.value) and "another dir" in str(e.value) and "checkpoints/last.ckpt" in str(e.value)
    after = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before  # nothing of the first run was replaced, deleted or added to
    # on the command line: exit status 2 before Hydra writes anything into the dir
    cli = run.parent / "cli"
    p = _cli(cli, *_overrides(tiny_corpus, 4))
    assert p.wait(timeout=300) == 0, p.stdout.read()[-3000:]
    hydra_files = {q: q.read_bytes() for q in cli.rglob("*") if q.is_file() and q.suffix in (".yaml", ".log")}
    p = _cli(cli, *_overrides(tiny_corpus, 4, "seed=7"))
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2, out[-3000:]
    assert "Traceback" not in out and f"error: {cli} already holds a training run" in out and f"resume={cli}" in out
    assert {q: q.read_bytes() for q in hydra_files} == hydra_files
    assert not list((cli / "checkpoints").glob("last-v*"))


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_run_dir_resumes_exactly_with_last_ckpt_the_newest(compose, tmp_path, tiny_corpus, how):
    total = 30
    full = tmp_path / "full"
    train(compose("train", full, _overrides(tiny_corpus, total)))

    first = tmp_path / "first"
    train(compose("train", first, _overrides(tiny_corpus, total, "stop_after_steps=9")))
    second = tmp_path / "second"
    if how == "moved":
        first.rename(second)
    else:
        import shutil

        shutil.copytree(first, second)
        kept = {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()}
    # resumed twice: the second resume must continue from the first resume's state, not step 9
    train(compose("train", tmp_path / "x", [f"resume={second}", "stop_after_steps=21"]))
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 21
    train(compose("train", tmp_path / "x", [f"resume={second}"]))

    ckdir = second / "checkpoints"
    assert not [p.name for p in ckdir.iterdir() if re.search(r"-v\d+$", p.stem)], sorted(p.name for p in ckdir.iterdir())
    last = torch.load(ckdir / "last.ckpt", weights_only=True)
    assert last["global_step"] == total
    assert_same_params(full, second)
    assert train_losses(second) == train_losses(full)
    # the best-k bookkeeping inside the checkpoint lives in the new dir and names files there
    for key, state in last["callbacks"].items():
        if "dirpath" not in state:
            continue
        assert state["dirpath"] == str(ckdir.resolve()), key
        for path in [*state["best_k_models"], state["best_model_path"], state["last_model_path"]]:
            if path:
                assert Path(path).parent == ckdir.resolve() and Path(path).is_file(), (key, path)
    if how == "copied":  # the original is left as it was
        assert {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()} == kept


def test_resume_onto_a_changed_corpus_is_refused_unless_allow_changes(compose, tmp_path, tiny_corpus):
    run = tmp_path / "run"
    train(compose("train", run, _overrides(tiny_corpus, 12, "stop_after_steps=6")))
    ckpt = run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["charlm"]["data"]["sha256"]
    text = tiny_corpus.read_text(encoding="utf-8")
    tiny_corpus.write_text(text[::-1], encoding="utf-8")  # same characters, same length, other text
    with pytest.raises(CharLMError) as e:
        train(compose("train", tmp_path / "x", [f"resume={run}"]))
    msg = str(e.value)
    assert "changed since the checkpoint" in msg and stored[:16] in msg and "allow_changes=true" in msg
    ck = torch.load(ckpt, weights_only=True)
    assert ck["global_step"] == 6 and ck["charlm"]["data"]["sha256"] == stored  # nothing written
    # allow_changes=true: continues on the changed text, and the checkpoint then names it
    train(compose("train", tmp_path / "x", [f"resume={run}", "allow_changes=true", "stop_after_steps=9"]))
    ck = torch.load(ckpt, weights_only=True)
    assert ck["global_step"] == 9 and ck["charlm"]["data"]["sha256"] != stored
    # another vocabulary is refused even with allow_changes: the ids would mean other characters
    tiny_corpus.write_text(text[::-1] + "@", encoding="utf-8")
    assert "@" not in text
    with pytest.raises(CharLMError, match=r"no longer has the run's vocabulary.*only in the file now: \['@'\]"):
        train(compose("train", tmp_path / "x", [f"resume={run}", "allow_changes=true"]))


def test_resume_from_an_earlier_checkpoint_keeps_each_sample_block_once(compose, tmp_path, tiny_corpus):
    """samples.txt and the samples of the checkpoint (the W&B table's rows) after a resume from an
    earlier checkpoint are those of a run never resumed: blocks written after that checkpoint are
    dropped (those steps run again), blocks before it kept."""
    from charlm.training.callbacks import read_samples

    extra = ("callbacks.samples.length=30",)
    full = tmp_path / "full"
    train(compose("train", full, _overrides(tiny_corpus, 20, *extra)))
    run = tmp_path / "run"
    train(compose("train", run, _overrides(tiny_corpus, 20, *extra)))
    (best10,) = (run / "checkpoints").glob("step000010-*.ckpt")
    train(compose("train", tmp_path / "x", [f"resume={best10}"]))
    assert (run / "samples.txt").read_text(encoding="utf-8") == (full / "samples.txt").read_text(encoding="utf-8")
    assert [b["step"] for b in read_samples(run / "samples.txt")] == [10, 10, 20, 20]
    (best20,) = (run / "checkpoints").glob("step000020-*.ckpt")  # written after the validation of step 20
    rows = torch.load(best20, weights_only=True)["callbacks"]["SampleText"]["rows"]
    assert [(r[0], r[1]) for r in rows] == [(10, 1.0), (10, 0.6), (20, 1.0), (20, 0.6)]


# ---------------------------------------------------------------------------------- job_status.yaml
def _train_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``charlm-train`` as a user runs it (``tests/`` on the path for :mod:`plugins`)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
    return subprocess.run([sys.executable, "-m", "charlm.cli.train", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _status(run: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run / "job_status.yaml"))


@pytest.mark.slow
def test_job_status_of_a_stopped_then_resumed_run_keeps_its_overrides_and_value(tmp_path, tiny_corpus):
    """stop_after_steps before max_steps is STOPPED (step, reason); resuming it to the end is
    COMPLETED with the run's own overrides (not `resume=...`), the resume noted; resuming the
    finished run again trains nothing and keeps the value of its final weights; a refused resume
    leaves the record alone. charlm-report shows each status."""
    from charlm.report import build_report
    from charlm.training.resume import merge_overrides

    run = tmp_path / "run"
    own = _overrides(tiny_corpus, 20)
    r = _train_cli(tmp_path, f"hydra.run.dir={run}", *own, "stop_after_steps=5")
    assert r.returncode == 0, r.stderr[-3000:]
    st = _status(run)
    assert st["status"] == "STOPPED" and st["step"] == 5 and "stop_after_steps=5" in st["reason"]
    assert st["overrides"] == [*own, "stop_after_steps=5"] and "resumes" not in st
    (job,) = build_report(run, tmp_path / "rep1", plot=False)
    assert job.status == "STOPPED" and "at step 5" in (tmp_path / "rep1" / "report.md").read_text()

    r = _train_cli(tmp_path, f"resume={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    done = _status(run)
    assert done["status"] == "COMPLETED" and done["step"] == 20 and math.isfinite(done["value"])
    own = merge_overrides(own)  # (the list repeats keys: the last value counts, as in Hydra)
    assert done["overrides"] == own  # the run's own, without one invocation's stop_after_steps or resume=
    assert done["resumes"] == [{"overrides": [f"resume={run}"], "from_step": 5, "to_step": 20}]

    r = _train_cli(tmp_path, f"resume={run}")  # finished: nothing to train
    assert r.returncode == 0, r.stderr[-3000:]
    again = _status(run)
    assert again["value"] == done["value"] and again["overrides"] == own and again["status"] == "COMPLETED"
    assert len(again["resumes"]) == 2 and again["resumes"][1]["from_step"] == again["resumes"][1]["to_step"] == 20

    r = _train_cli(tmp_path, f"resume={run}", "optimizer.lr=0.5")  # refused: the record stands
    assert r.returncode == 2 and _status(run) == again
    (job,) = build_report(run, tmp_path / "rep2", plot=False)
    assert job.status == "COMPLETED" and job.overrides == own and job.steps == 20


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_an_interrupted_single_run_is_recorded_interrupted(tmp_path, tiny_corpus, sig):
    """Ctrl-C or SIGTERM (sent by the test's own callback right after step 3) ends a single run
    as INTERRUPTED, with the step, and charlm-report says so (it listed it as COMPLETED)."""
    from charlm.report import build_report

    run = tmp_path / "run"
    r = _train_cli(tmp_path, f"hydra.run.dir={run}", *_overrides(tiny_corpus, 1000),
                   "+callbacks.signal._target_=plugins.SignalAtStep", "+callbacks.signal.step=3",
                   f"+callbacks.signal.signum={sig}")
    assert r.returncode == 128 + getattr(signal, sig), r.stderr[-3000:]
    st = _status(run)
    assert st["status"] == "INTERRUPTED" and st["step"] == 3 and f"{sig} at step 3" in st["error"]
    (job,) = build_report(run, tmp_path / "rep", plot=False)
    assert job.status == "INTERRUPTED" and f"{sig} at step 3" in (tmp_path / "rep" / "report.md").read_text()


def test_a_failed_single_run_is_recorded_and_errors_name_the_option_given(tmp_path):
    """`ckpt_path=nope.ckpt` says ckpt_path (it said `resume=nope.ckpt` and suggested dropping
    resume=), and the run dir's job_status.yaml says FAILED with the error."""
    run = tmp_path / "run"
    r = _train_cli(tmp_path, f"hydra.run.dir={run}", "ckpt_path=nope.ckpt", "logger=csv")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ckpt_path=nope.ckpt: ") and "resume" not in r.stderr and "Traceback" not in r.stderr
    st = _status(run)
    assert st["status"] == "FAILED" and st["error"].startswith("CharLMError: ckpt_path=nope.ckpt")


def test_stop_after_steps_before_max_steps_is_recorded_stopped(compose, tmp_path, tiny_corpus):
    """A run cut by stop_after_steps is STOPPED with its step and reason (it was COMPLETED); one
    whose stop_after_steps is not before max_steps simply completes."""
    from charlm.cli.train import record_status
    from charlm.sweeps import objective

    for stop, steps, status in [(4, 12, "STOPPED"), (12, 12, "COMPLETED")]:
        run = tmp_path / f"run{stop}"
        cfg = compose("train", run, _overrides(tiny_corpus, steps, f"stop_after_steps={stop}"))
        record: dict = {}
        record_status(cfg, record, value=objective(train(cfg, record)))
        st = _status(run)
        assert st["status"] == status and st["step"] == stop, st
        assert ("reason" in st) == (status == "STOPPED")
        if status == "STOPPED":
            assert st["reason"] == "stop_after_steps=4 (trainer.max_steps=12)"
