"""Multi-process training on CPU (DDP, gloo): equivalence with one process, exact resume, and
resume on another number of devices (issue 3). Real ``charlm-train`` processes: slow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = 20


def run_train(run_dir: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cache = run_dir.parent.parent / "charlm-cache"
    # tests/ on the path too: test callbacks (fault injection) are passed as +callbacks.x._target_
    path = os.pathsep.join(str(p) for p in (REPO / "src", REPO / "tests"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, CHARLM_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "charlm.cli.train", f"hydra.run.dir={run_dir}", *overrides]
    p = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def base(corpus: Path, devices: int, batch: int, *extra: str) -> list[str]:
    trainer = ["trainer=ddp_cpu", f"trainer.devices={devices}"] if devices > 1 else ["trainer=cpu"]
    return trainer + [
        f"data.path={corpus}",
        f"data.batch_size={batch}",
        "data.seq_len=16",
        "data.splits=[0.9,0.1,0.0]",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.dropout=0.0",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=null",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=false",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "callbacks.samples.length=0",
        "~callbacks.rich_progress_bar",
        "logger=csv",
        *extra,
    ]


def metrics(run_dir: Path, key: str) -> dict[int, float]:
    out = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                out[int(row["step"])] = float(row[key])
    return out


def params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def close(a: dict, b: dict, rtol=1e-4) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rtol * abs(a[k]) + 1e-6 for k in a)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> Path:
    p = tmp_path_factory.mktemp("ddp") / "tiny.txt"
    p.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:8_000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """One process x 8 streams, and two processes x 4 streams, 20 steps each."""
    root = tmp_path_factory.mktemp("ddp-runs")
    single, ddp = root / "single", root / "ddp"
    run_train(single, *base(corpus, 1, 8))
    p = run_train(ddp, *base(corpus, 2, 4))
    (ddp / "console.log").write_text(p.stdout + p.stderr, encoding="utf-8")
    return root, single, ddp


def test_two_processes_equal_one_with_twice_the_streams(runs):
    root, single, ddp = runs
    assert sorted(p.name for p in root.iterdir()) == ["ddp", "single"]  # no extra dirs per rank
    ls, ld = metrics(single, "train/loss"), metrics(ddp, "train/loss")
    assert len(ls) == STEPS and close(ls, ld), (ls, ld)
    vs, vd = metrics(single, "val/loss"), metrics(ddp, "val/loss")
    assert len(vs) == 2 and close(vs, vd, rtol=1e-5), (vs, vd)
    assert (ddp / "checkpoints" / "last.ckpt").is_file()
    ck = torch.load(ddp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["charlm"]["train_state"][0].shape == (1, 8, 32)  # every stream of both ranks
    assert ck["charlm"]["rng"]["world_size"] == 2


def test_ddp_console_has_no_advice_or_notices_a_user_cannot_act_on(runs):
    _, _, ddp = runs
    text = (ddp / "console.log").read_text(encoding="utf-8")
    assert "val loss" in text  # the run's own progress lines are there (output not a terminal)
    # val/test metrics are reduced over the ranks by torchmetrics: Lightning's sync_dist advice
    # does not apply; the all-gather of the resume state is Lightning's call, not the user's
    assert "sync_dist" not in text and "all_gather is deprecated" not in text


def test_ddp_stopped_and_resumed_on_2_1_and_2_devices(runs, corpus, tmp_path):
    _, single, ddp = runs
    cut = tmp_path / "cut"
    run_train(cut, *base(corpus, 2, 4, "stop_after_steps=10"))
    moved = tmp_path / "cut_to_1"
    shutil.copytree(cut, moved)
    # 2 -> 2: identical to the run never stopped
    run_train(tmp_path / "x1", f"resume={cut}")
    assert metrics(cut, "train/loss") == metrics(ddp, "train/loss")
    for k, v in params(ddp).items():
        assert torch.equal(v, params(cut)[k]), k
    # 2 -> 1: the global streams (2 x 4) re-divided as 1 x 8
    run_train(tmp_path / "x2", f"resume={moved}", "trainer=cpu", "trainer.devices=1", "data.batch_size=8")
    assert close(metrics(moved, "train/loss"), metrics(single, "train/loss"))
    # 1 -> 2
    one = tmp_path / "one"
    run_train(one, *base(corpus, 1, 8, "stop_after_steps=10"))
    run_train(tmp_path / "x3", f"resume={one}", "trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=4")
    assert close(metrics(one, "train/loss"), metrics(ddp, "train/loss"))
    for k, v in params(ddp).items():
        assert torch.allclose(v, params(one)[k], rtol=1e-4, atol=1e-6), k


def test_ddp_sigterm_on_one_rank_stops_every_rank_after_the_same_step(runs, corpus, tmp_path):
    """SIGTERM to rank 1 only (what a cluster may do): the ranks decide together, both finish
    step 4, last.ckpt holds step 4 of both ranks' streams, and the run resumes to the run never
    stopped."""
    _, _, ddp = runs
    cut = tmp_path / "cut"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
               CHARLM_CACHE_DIR=str(cut.parent.parent / "charlm-cache"))
    cmd = [sys.executable, "-m", "charlm.cli.train", f"hydra.run.dir={cut}", *base(corpus, 2, 4),
           "callbacks.last_checkpoint.every_n_train_steps=100000",
           "+callbacks.interrupt._target_=interrupt_plugin.SignalAt", "+callbacks.interrupt.signal=SIGTERM",
           "+callbacks.interrupt.hook=on_train_batch_end", "+callbacks.interrupt.step=3", "+callbacks.interrupt.rank=1"]
    p = subprocess.run(cmd, cwd=cut.parent, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 143, (p.returncode, p.stderr[-3000:])
    assert "training interrupted at step 4 (SIGTERM)" in p.stdout
    ck = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 4 and ck["charlm"]["train_state"][0].shape == (1, 8, 32)
    # resume= replays the run's overrides, the plugin's too: disarm it (a step never reached)
    p = subprocess.run([*cmd[:3], f"hydra.run.dir={tmp_path / 'x'}", f"resume={cut}", "+callbacks.interrupt.step=-1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert metrics(cut, "train/loss") == metrics(ddp, "train/loss")
    for k, v in params(ddp).items():
        assert torch.equal(v, params(cut)[k]), k


class NaNStateOnRank(L.Callback):
    """Test fault injection: before optimizer step ``step`` (1-based), rank ``rank`` alone gets a
    NaN hidden state, so only its loss of that step is non-finite."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank != self.rank or trainer.global_step != self.step - 1:
            return
        state = pl_module.hidden or pl_module.net.init_state(batch[0].shape[0])
        pl_module.hidden = tuple(torch.full_like(s, float("nan")) for s in state)


def test_nonfinite_skip_on_one_rank_is_decided_by_all_ranks(corpus, tmp_path):
    # a NaN on rank 1 only, at step 5, which writes a checkpoint (every 5 steps): every rank skips
    # the step and resets its state, so the checkpoint's gather of all ranks' states goes through
    run = tmp_path / "nan"
    p = run_train(run, *base(corpus, 2, 4, "nonfinite=skip", f"+callbacks.nan._target_={NaNStateOnRank.__module__}.NaNStateOnRank",
                             "+callbacks.nan.rank=1", "+callbacks.nan.step=5"), timeout=180)
    out = p.stdout + p.stderr + (run / "train.log").read_text(encoding="utf-8")
    assert "step 4: non-finite training loss" in out, out[-3000:]
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == STEPS
    assert ck["charlm"]["train_state"][0].shape == (1, 8, 32) and torch.isfinite(ck["charlm"]["train_state"][0]).all()
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


VALIDATE = """
import json, sys
import lightning as L
from lightning.pytorch.strategies import DDPStrategy
from charlm.data.datamodule import CharDataModule
from charlm.training.module import CharLM

ckpt, corpus, devices, streams = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
module = CharLM.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
dm = CharDataModule(path=corpus, splits=(0.8, 0.2, 0.0), batch_size=16, seq_len=64, eval_batch_size=streams)
trainer = L.Trainer(
    accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False, enable_model_summary=False,
    use_distributed_sampler=False, strategy=DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto",
)
(res,) = trainer.validate(module, datamodule=dm, verbose=False)
if trainer.is_global_zero:
    print("VAL", json.dumps(res))
"""


def test_val_loss_is_the_same_for_1_and_2_devices_and_any_number_of_streams(shared_data, tmp_path):
    # a model trained for 200 steps, validated by Lightning (the datamodule's val loader and
    # CharLM's validation) on 1 device x 1 stream and on 2 gloo devices x 32 and x 256 streams
    corpus = tmp_path / "c.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:120_000], encoding="utf-8")
    run = tmp_path / "run"
    run_train(run, *base(corpus, 1, 16, "data.splits=[0.8,0.2,0.0]", "data.seq_len=64", "model.hidden_size=64",
                         "optimizer.lr=1e-2", "trainer.max_steps=200", "trainer.val_check_interval=200"))
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE, encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), CHARLM_CACHE_DIR=str(tmp_path / "cache"))
    losses = {}
    for devices, streams in ((1, 1), (2, 32), (2, 256)):
        p = subprocess.run([sys.executable, str(script), str(run / "checkpoints" / "last.ckpt"), str(corpus),
                            str(devices), str(streams)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        line = next(x for x in p.stdout.splitlines() if x.startswith("VAL "))
        losses[devices * streams] = json.loads(line[4:])["val/loss"]
    assert losses[1] < 2.5, losses  # a trained model: its state carries information
    assert max(losses.values()) - min(losses.values()) < 1e-3, losses
