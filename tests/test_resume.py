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
