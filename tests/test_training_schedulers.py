"""charlm.training.schedulers: learning-rate schedules; a plateau schedule on the validation clock, and runs
without a step bound."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from charlm.cli.train import train
from charlm.errors import CharLMError
from charlm.training import schedulers
from conftest import FAST_TRAIN


@pytest.fixture
def corpus_20k(tmp_path, shakespeare_path) -> Path:
    """The first 20,000 characters of Tiny Shakespeare: with 16 streams x 64 characters an epoch
    is 17 training batches (so epochs end far more often than a run validates)."""
    p = tmp_path / "c20k.txt"
    p.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return p


def read_run(out: Path) -> tuple[dict[int, float], list[tuple[int, float]]]:
    """``({optimizer step n: learning rate used by step n}, [(step of a validation, val/loss)])``
    from a run's CSV (Lightning logs both under the logging step, n - 1)."""
    lr: dict[int, float] = {}
    val: list[tuple[int, float]] = []
    with open(out / "csv" / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r.get("lr"):
                lr[int(r["step"]) + 1] = float(r["lr"])
            if r.get("val/loss"):
                val.append((int(r["step"]) + 1, float(r["val/loss"])))
    return lr, val


#: A learning rate so small that val/loss stays flat (no relative improvement of 1e-4), so the
#: plateau schedule cuts the rate; min_lr 0 lets it.
FLAT = ("optimizer=sgd", "optimizer.lr=1e-6", "scheduler.min_lr=0")


def plateau_run(corpus: Path, steps: int, *extra: str) -> list[str]:
    return FAST_TRAIN + [
        f"data.path={corpus}",
        "data=file",
        "scheduler=plateau",
        "data.batch_size=16",
        "data.seq_len=64",
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=null",
        "trainer.log_every_n_steps=1",
        "callbacks.samples.length=0",
        "~callbacks.visualize",
        *extra,
    ]


def test_plateau_keeps_the_learning_rate_while_val_loss_improves(tmp_path, compose, corpus_20k):
    # stepped at every epoch end with the last (stale) val/loss, the LR used to halve at step 119
    out = tmp_path / "run"
    train(compose("train", out, plateau_run(corpus_20k, 120, "trainer.val_check_interval=60")))
    lr, val = read_run(out)
    assert sorted(lr) == list(range(1, 121)) and set(lr.values()) == {3e-3}
    assert [s for s, _ in val] == [60, 120] and val[1][1] < val[0][1]  # val/loss improved


def test_plateau_steps_once_per_validation_with_that_validations_value(tmp_path, compose, corpus_20k):
    out = tmp_path / "run"
    train(compose("train", out, plateau_run(corpus_20k, 40, "trainer.val_check_interval=5", *FLAT, "scheduler.patience=1")))
    lr, val = read_run(out)
    assert [s for s, _ in val] == list(range(5, 41, 5))
    # the same schedule fed with the logged validations, in order, gives the rate of every step
    ref = ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-6), factor=0.5, patience=1,
                            min_lr=0.0)
    pending = list(val)
    for step in range(1, 41):
        while pending and pending[0][0] < step:
            ref.step(pending.pop(0)[1])
        assert lr[step] == pytest.approx(ref.optimizer.param_groups[0]["lr"], rel=1e-9), step
    assert len(set(lr.values())) == 4  # cut after the validations at steps 15, 25 and 35


def test_plateau_learning_rate_curve_is_the_same_after_stop_and_resume(tmp_path, compose, corpus_20k):
    opts = ("trainer.val_check_interval=10", *FLAT, "callbacks.last_checkpoint.every_n_train_steps=10")
    full = tmp_path / "full"
    train(compose("train", full, plateau_run(corpus_20k, 45, *opts)))
    cut = tmp_path / "cut"
    train(compose("train", cut, plateau_run(corpus_20k, 45, *opts, "stop_after_steps=20")))
    train(compose("train", tmp_path / "elsewhere", [f"resume={cut}"]))
    lf, vf = read_run(full)
    lc, vc = read_run(cut)
    assert lc == lf and len(set(lf.values())) == 2  # cut once, after the validation at step 40
    assert vc == vf
    sf, sc = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0] for d in (full, cut))
    assert sc == sf


def test_schedules_without_a_horizon_accept_a_run_without_a_step_bound():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for make in (schedulers.constant, schedulers.plateau, schedulers.charrnn_decay):
        assert make(opt, total_steps=None)["scheduler"] is not None
    with pytest.raises(CharLMError, match=r"scheduler=cosine .*no step bound.*trainer\.max_steps"):
        schedulers.warmup_cosine(opt, total_steps=None)


def test_a_run_bounded_only_by_max_time(tmp_path, compose, small_corpus):
    base = FAST_TRAIN + ["data=file", f"data.path={small_corpus}", "trainer.max_steps=-1", 'trainer.max_time="00:00:00:01"',
                         "trainer.val_check_interval=100000", "callbacks.samples.length=0", "~callbacks.visualize"]
    # the default cosine schedule decays over the run's length, which such a run does not have
    with pytest.raises(CharLMError, match="scheduler=cosine decays over the run's length"):
        train(compose("train", tmp_path / "cosine", base))
    out = tmp_path / "none"
    metrics = train(compose("train", out, base + ["scheduler=none"]))
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    lr, val = read_run(out)
    assert step > 0 and val == [(step, pytest.approx(metrics["val/loss"]))]  # validated after its last step
