"""Exact resume, stop_after_steps, resume refusals, init_from, signals and SIGKILL (issue 3)."""

from __future__ import annotations

import csv
import os
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
    assert f"resume={run}" in out
    # an interrupted run is not a finished one: 128 + signal number, as shells report, and says so
    assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:])
    assert f"training interrupted at step {ck['global_step']:,} ({sig.name})" in out and "training finished" not in out
    assert f"resume it:   charlm-train resume={run}" in out


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
    from charlm.training import resume

    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", "GROUP_RANK"):
        monkeypatch.delenv(var, raising=False)  # no external launcher
    # one CPU device: "auto" resolves to CPUAccelerator.auto_device_count() = 1, so the sweep runs
    for devices in ("auto", "1", 1):
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=cpu", f"trainer.devices={devices}"]))
        resume.check_multirun_ddp(cfg)  # main refused "auto" (it counted any string as 2)
        assert resume.resolve_num_devices(cfg) == 1
    # two CPU processes (as a string too): refused, naming the count
    for devices in ("2", "'2'"):
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=ddp_cpu", f"trainer.devices={devices}"]))
        with pytest.raises(CharLMError, match="jobs use 2 devices each"):
            resume.check_multirun_ddp(cfg)
    # -1 is not let through: Lightning refuses it on the CPU (on GPUs it means all of them)
    cfg = _as_multirun(compose("train", tmp_path, ["trainer=cpu", "trainer.devices=-1"]))
    with pytest.raises(CharLMError, match=r"trainer.devices=-1 with trainer.accelerator='cpu'.*int > 0"):
        resume.check_multirun_ddp(cfg)  # main let it through (n = -1)
    if not torch.cuda.is_available():
        cfg = _as_multirun(compose("train", tmp_path, ["trainer=ddp"]))  # accelerator gpu, devices -1
        with pytest.raises(CharLMError, match="trainer.devices=-1 with trainer.accelerator='gpu'"):
            resume.check_multirun_ddp(cfg)
