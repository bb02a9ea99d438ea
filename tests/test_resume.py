"""Exact resume, stop_after_steps, resume refusals, init_from, and stopping on SIGINT/SIGTERM at any moment."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
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


def val_rows(run_dir: Path) -> dict[int, float]:
    """``{step: val/loss}`` from a run's CSV log."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")}


def best_files(run_dir: Path) -> list[str]:
    """The best-k checkpoint files on disk (everything but last*.ckpt)."""
    return sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt") if not p.name.startswith("last"))


def assert_same_run(full: Path, cut: Path, total: int) -> None:
    """A stopped-and-resumed run equals the run never stopped: weights, every train loss, the
    validation rows, the best-k files and the sample blocks."""
    from charlm.sampling.samples_file import read_samples

    assert_same_params(full, cut)
    lf, lc = train_losses(full), train_losses(cut)
    assert sorted(lc) == sorted(lf) and len(lf) == total
    assert lc == lf  # identical floats at every step
    assert val_rows(cut) == val_rows(full)
    assert best_files(cut) == best_files(full)
    assert read_samples(cut / "samples.txt") == read_samples(full / "samples.txt")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    """``(corpus, run dir)`` of the 40-step run never stopped that the stopped ones are compared to
    (validations at steps 10, 20, 30, 40; save_top_k=3 keeps 3 of them)."""
    from conftest import compose_cfg

    base = tmp_path_factory.mktemp("full")
    corpus = base / "tiny.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:6_000], encoding="utf-8")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_cfg("train", base / "run", _overrides(corpus, FULL_STEPS)))
    finally:
        torch.set_num_threads(n)
    assert len(val_rows(base / "run")) == 4 and len(best_files(base / "run")) == 3
    return corpus, base / "run"


FULL_STEPS = 40  # an epoch is 21 batches: the runs cross an epoch boundary


@pytest.mark.parametrize("stop", [9, 20, 21, 25], ids=["mid-epoch", "validation-step", "epoch-end", "second-epoch"])
def test_stopped_and_resumed_equals_uninterrupted(compose, tmp_path, full_run, stop):
    """stop_after_steps then resume= gives the run never stopped: no validation, best-k file or
    sample block at a stop step that is not a validation step; at a validation step (20) the
    stopped run validates it and the resumed one does not again; save_top_k files stay 3."""
    corpus, full = full_run
    cut = tmp_path / "cut"
    train(compose("train", cut, _overrides(corpus, FULL_STEPS, f"stop_after_steps={stop}")))
    ck = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == stop
    full_vals = val_rows(full)
    assert val_rows(cut) == {k: v for k, v in full_vals.items() if k < stop}  # the stop added no validation
    assert not (cut / "visualize").exists()  # nor the end-of-training page
    # the resumed run writes into the original run dir, whatever output dir this invocation got
    train(compose("train", tmp_path / "elsewhere", [f"resume={cut}"]))
    assert_same_run(full, cut, FULL_STEPS)
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
        train(compose("train", tmp_path / "y", _overrides(tiny_corpus, 4, f"ckpt={tmp_path / 'nope.ckpt'}")))


def test_ckpt_path_is_the_deprecated_name_of_ckpt(compose, tmp_path, tiny_corpus, caplog):
    """charlm-train's checkpoint option is ckpt=, as in the other apps; ckpt_path= still works for
    one release, with a warning, and errors name the option given; both at once is an error."""
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(CharLMError, match=r"^ckpt_path=.*nope\.ckpt: no such"):
        train(compose("train", tmp_path / "old", _overrides(tiny_corpus, 4, f"ckpt_path={missing}")))
    assert any("ckpt_path= is deprecated" in r.getMessage() and f"use ckpt={missing}" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with pytest.raises(CharLMError, match=r"^ckpt=.*nope\.ckpt: no such"):
        train(compose("train", tmp_path / "new", _overrides(tiny_corpus, 4, f"ckpt={missing}")))
    assert not any("deprecated" in r.getMessage() for r in caplog.records)
    with pytest.raises(CharLMError, match="one option"):
        train(compose("train", tmp_path / "both", _overrides(tiny_corpus, 4, f"ckpt={missing}", f"ckpt_path={missing}")))


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


TESTS = Path(__file__).resolve().parent


def _cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``charlm-train`` in a subprocess (this tests folder importable, for :mod:`interrupt_plugin`)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(TESTS)]))
    cmd = [sys.executable, "-m", "charlm.cli.train", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)


def _signal_at(sig: str, hook: str, step: int = 0) -> list[str]:
    """Overrides adding :class:`interrupt_plugin.SignalAt`: the run signals itself at that moment."""
    return ["+callbacks.interrupt._target_=interrupt_plugin.SignalAt", f"+callbacks.interrupt.signal={sig}",
            f"+callbacks.interrupt.hook={hook}", f"+callbacks.interrupt.step={step}"]


#: (signal, hook, step the signal is sent at, step of the last.ckpt left (None: none), extra overrides)
MOMENTS = {
    # before the first optimizer step: nothing trained, nothing to resume
    "SIGTERM-building-the-run": ("SIGTERM", "init", 0, None, []),
    "SIGTERM-fit-set-up-with-wandb": ("SIGTERM", "setup", 0, None, ["logger=default"]),
    "SIGTERM-sanity-check": ("SIGTERM", "on_sanity_check_start", 0, None, ["trainer.num_sanity_val_steps=2"]),
    "SIGINT-before-first-step": ("SIGINT", "on_train_start", 0, None, []),
    # mid-epoch before any validation, after every charlm callback's end-of-step work: the
    # next step finishes and is saved
    "SIGTERM-after-step-3": ("SIGTERM", "on_train_batch_end", 3, 4, []),
    "SIGINT-after-step-3": ("SIGINT", "on_train_batch_end", 3, 4, []),
    # during the step-10 validation: it finishes (best-k file, samples), then last.ckpt of step 10
    "SIGTERM-during-validation": ("SIGTERM", "on_validation_batch_end", 10, 10, []),
    # during the periodic write of step 7: the write completes, step 8 finishes and is saved
    "SIGTERM-during-checkpoint-write": ("SIGTERM", "on_save_checkpoint", 7, 8,
                                        ["callbacks.last_checkpoint.every_n_train_steps=7"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_signal_at_any_moment_leaves_last_ckpt_of_the_last_step(compose, tmp_path, full_run, moment):
    """SIGTERM/SIGINT at a chosen moment of a real run: exit 128 + signal, last.ckpt of the last
    completed step (none before the first step: the summary says there is nothing to resume), a
    summary that names only files on disk, and resuming gives the run never stopped."""
    sig, hook, at, expect, extra = MOMENTS[moment]
    corpus, full = full_run
    run = tmp_path / "run"
    r = _cli(run, *_overrides(corpus, FULL_STEPS, "callbacks.last_checkpoint.every_n_train_steps=100000", *extra),
             *_signal_at(sig, hook, at))
    out = r.stdout + r.stderr
    signum = getattr(signal, sig)
    assert r.returncode == 128 + signum, (r.returncode, out[-3000:])  # as shells report a signal
    assert "training finished" not in out and "Traceback" not in out, out[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    # every path the summary names is on disk
    for line in r.stdout.splitlines():
        if line.startswith("sample it:"):
            assert (run.parent / line.split("ckpt=", 1)[1]).is_file(), line
    if expect is None:
        assert not last.exists() and not best_files(run)
        assert "nothing to resume" in r.stdout and "sample it:" not in r.stdout, r.stdout[-2000:]
        assert f"training interrupted at step 0 ({sig})" in r.stdout
        return
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["global_step"] == expect, out[-3000:]
    assert f"training interrupted at step {expect:,} ({sig})" in r.stdout
    assert f"last.ckpt (step {expect:,})" in r.stdout and f"resume it:   charlm-train resume={run.name}" in r.stdout
    for name in best_files(run):
        assert name in r.stdout
    assert val_rows(run) == {k: v for k, v in val_rows(full).items() if k < expect}
    if moment in ("SIGTERM-after-step-3", "SIGINT-after-step-3", "SIGTERM-during-validation"):
        # resume= replays the run's overrides, the plugin's too: disarm it (a step never reached)
        train(compose("train", tmp_path / "x", [f"resume={run}", "+callbacks.interrupt.step=-1"]))
        assert_same_run(full, run, FULL_STEPS)


def test_runs_from_before_the_regularisers_resume_without_a_change():
    from charlm.training.run_config import config_changes

    data = {"batch_size": 8}
    old = {"data": data, "model": {"hidden_size": 64, "dropout": 0.1}}
    new = {"data": data, "model": {"hidden_size": 64, "dropout": 0.1, "weight_drop": 0.0, "hidden_dropout": 0.0}}
    assert config_changes(old, new) == ([], [])
    changed, _ = config_changes(old, {"data": data, "model": {**new["model"], "weight_drop": 0.5}})
    assert changed == ["model.weight_drop: '<unset>' -> 0.5"]


def test_resume_counts_the_global_streams_as_lightning_counts_devices():
    from charlm.training.run_config import config_changes

    cpu = lambda devices, batch: {"data": {"batch_size": batch}, "trainer": {"accelerator": "cpu", "devices": devices}}  # noqa: E731
    # "2" is two CPU processes for Lightning (main counted any string as one device)
    assert config_changes(cpu("2", 4), cpu(1, 8)) == ([], [])
    changed, _ = config_changes(cpu("2", 4), cpu(1, 4))
    assert changed == [
        "global streams (data.batch_size x devices x nodes): 8 -> 4 (to resume on another number of devices "
        "keep the product: e.g. 2 devices x 4 -> 1 device x 8)"
    ]
    # the old run's processes as its checkpoint records them (its config may name devices not here)
    gpus = {"data": {"batch_size": 4}, "trainer": {"accelerator": "gpu", "devices": 2}}
    assert config_changes(gpus, cpu(1, 8), old_world_size=2) == ([], [])
    assert config_changes(gpus, cpu(1, 4), old_world_size=2)[0][0].startswith("global streams (data.batch_size x devices x nodes): 8 -> 4")


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
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    hydra_files = {q: q.read_bytes() for q in cli.rglob("*") if q.is_file() and q.suffix in (".yaml", ".log")}
    p = _cli(cli, *_overrides(tiny_corpus, 4, "seed=7"))
    out = p.stdout + p.stderr
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
    from charlm.sampling.samples_file import read_samples

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


def _as_multirun(cfg):
    """Mark a composed config as a job of a Hydra multirun (what ``charlm-train -m`` gives)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_multirun_guard_counts_devices_as_lightning_does(compose, tmp_path, monkeypatch):
    from charlm.sweeps import check_multirun_ddp
    from charlm.training.devices import resolve_num_devices

    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", "GROUP_RANK"):
        monkeypatch.delenv(var, raising=False)  # no external launcher
    # one CPU device: "auto" resolves to CPUAccelerator.auto_device_count() = 1, so the sweep runs
    for devices in ("auto", "1", 1):
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=cpu", f"trainer.devices={devices}"]))
        check_multirun_ddp(cfg)  # main refused "auto" (it counted any string as 2)
        assert resolve_num_devices(cfg) == 1
    # two CPU processes (as a string too): refused, naming the count
    for devices in ("2", "'2'"):
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=ddp_cpu", f"trainer.devices={devices}"]))
        with pytest.raises(CharLMError, match="jobs use 2 devices each"):
            check_multirun_ddp(cfg)
    # -1 is not let through: Lightning refuses it on the CPU (on GPUs it means all of them)
    cfg = _as_multirun(compose("train", tmp_path, ["trainer=cpu", "trainer.devices=-1"]))
    with pytest.raises(CharLMError, match=r"trainer.devices=-1 with trainer.accelerator='cpu'.*int > 0"):
        check_multirun_ddp(cfg)  # main let it through (n = -1)
    if not torch.cuda.is_available():
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=ddp"]))  # accelerator gpu, devices -1
        with pytest.raises(CharLMError, match="trainer.devices=-1 with trainer.accelerator='gpu'"):
            check_multirun_ddp(cfg)


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
    from charlm.evaluation.report import build_report
    from charlm.training.run_config import merge_overrides

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
    from charlm.evaluation.report import build_report

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
    """`ckpt=nope.ckpt` says ckpt (it said `resume=nope.ckpt` and suggested dropping resume=), and
    the run dir's job_status.yaml says FAILED with the error."""
    run = tmp_path / "run"
    r = _train_cli(tmp_path, f"hydra.run.dir={run}", "ckpt=nope.ckpt", "logger=csv")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ckpt=nope.ckpt: ") and "resume" not in r.stderr and "Traceback" not in r.stderr
    st = _status(run)
    assert st["status"] == "FAILED" and st["error"].startswith("CharLMError: ckpt=nope.ckpt")


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
