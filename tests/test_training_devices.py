"""charlm.training.devices: training on several devices, as CPU processes (DDP, gloo): the global
streams (data.batch_size x devices) make 2 processes x 4 streams the run of 1 process x 8, which
resumes exactly on 2, 1 or 2 devices; a signal or a non-finite loss on one rank is decided by every
rank; the val loss is the same for any number of devices and streams; one W&B run. Real
``charlm-train`` processes: slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import DDP_TRAIN, logged, weights

pytestmark = pytest.mark.slow

STEPS = 20  # DDP_TRAIN's trainer.max_steps


def cache_env(run_dir: Path) -> dict:
    """A corpus cache of these runs' own."""
    return {"CHARLM_CACHE_DIR": str(run_dir.parent.parent / "charlm-cache")}


@pytest.fixture(scope="module")
def run_train(run_app):
    """``run_train(run_dir, *overrides)``: ``charlm-train`` into ``run_dir`` (``tests/`` on the path
    for :mod:`plugins`); fails unless it exits 0."""

    def run_train(run_dir: Path, *overrides: str, timeout: int = 300):
        p = run_app("train", f"hydra.run.dir={run_dir}", *overrides, cwd=run_dir.parent, plugins=True, timeout=timeout,
                    env=cache_env(run_dir))
        assert p.returncode == 0, p.stderr[-3000:]
        return p

    return run_train


def base(corpus: Path, devices: int, batch: int, *extra: str) -> list[str]:
    """:data:`DDP_TRAIN` on ``corpus``: ``devices`` CPU processes of ``batch`` streams each."""
    trainer = ["trainer=ddp_cpu", f"trainer.devices={devices}"] if devices > 1 else ["trainer=cpu"]
    return [*trainer, *DDP_TRAIN, f"data.path={corpus}", f"data.batch_size={batch}", *extra]


def close(a: dict, b: dict, rtol=1e-4) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rtol * abs(a[k]) + 1e-6 for k in a)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> Path:
    p = tmp_path_factory.mktemp("ddp") / "tiny.txt"
    p.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:8_000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory, run_train):
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
    ls, ld = logged(single, "train/loss"), logged(ddp, "train/loss")
    assert len(ls) == STEPS and close(ls, ld), (ls, ld)
    vs, vd = logged(single, "val/loss"), logged(ddp, "val/loss")
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


def test_ddp_stopped_and_resumed_on_2_1_and_2_devices(runs, corpus, tmp_path, run_train):
    _, single, ddp = runs
    cut = tmp_path / "cut"
    run_train(cut, *base(corpus, 2, 4, "stop_after_steps=10"))
    moved = tmp_path / "cut_to_1"
    shutil.copytree(cut, moved)
    # 2 -> 2: identical to the run never stopped
    run_train(tmp_path / "x1", f"resume={cut}")
    assert logged(cut, "train/loss") == logged(ddp, "train/loss")
    for k, v in weights(ddp).items():
        assert torch.equal(v, weights(cut)[k]), k
    # 2 -> 1: the global streams (2 x 4) re-divided as 1 x 8
    run_train(tmp_path / "x2", f"resume={moved}", "trainer=cpu", "trainer.devices=1", "data.batch_size=8")
    assert close(logged(moved, "train/loss"), logged(single, "train/loss"))
    # 1 -> 2
    one = tmp_path / "one"
    run_train(one, *base(corpus, 1, 8, "stop_after_steps=10"))
    run_train(tmp_path / "x3", f"resume={one}", "trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=4")
    assert close(logged(one, "train/loss"), logged(ddp, "train/loss"))
    for k, v in weights(ddp).items():
        assert torch.allclose(v, weights(one)[k], rtol=1e-4, atol=1e-6), k


def test_ddp_sigterm_on_one_rank_stops_every_rank_after_the_same_step(runs, corpus, tmp_path, run_app):
    """SIGTERM to rank 1 only (what a cluster may do): the ranks decide together, both finish
    step 4, last.ckpt holds step 4 of both ranks' streams, and the run resumes to the run never
    stopped."""
    _, _, ddp = runs
    cut = tmp_path / "cut"
    p = run_app("train", f"hydra.run.dir={cut}", *base(corpus, 2, 4), "callbacks.last_checkpoint.every_n_train_steps=100000",
                "+callbacks.interrupt._target_=plugins.SignalAt", "+callbacks.interrupt.signal=SIGTERM",
                "+callbacks.interrupt.hook=on_train_batch_end", "+callbacks.interrupt.step=3", "+callbacks.interrupt.rank=1",
                cwd=cut.parent, plugins=True, env=cache_env(cut), timeout=300)
    assert p.returncode == 143, (p.returncode, p.stderr[-3000:])
    assert "training interrupted at step 4 (SIGTERM)" in p.stdout
    ck = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 4 and ck["charlm"]["train_state"][0].shape == (1, 8, 32)
    # resume= replays the run's overrides, the plugin's too: disarm it (a step never reached)
    p = run_app("train", f"hydra.run.dir={tmp_path / 'x'}", f"resume={cut}", "+callbacks.interrupt.step=-1", cwd=tmp_path,
                plugins=True, env=cache_env(cut), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert logged(cut, "train/loss") == logged(ddp, "train/loss")
    for k, v in weights(ddp).items():
        assert torch.equal(v, weights(cut)[k]), k


def test_nonfinite_skip_on_one_rank_is_decided_by_all_ranks(corpus, tmp_path, run_train):
    # a NaN on rank 1 only, at step 5, which writes a checkpoint (every 5 steps): every rank skips
    # the step and resets its state, so the checkpoint's gather of all ranks' states goes through
    run = tmp_path / "nan"
    p = run_train(run, *base(corpus, 2, 4, "nonfinite=skip", "+callbacks.nan._target_=plugins.NaNStateOnRank",
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


def test_val_loss_is_the_same_for_1_and_2_devices_and_any_number_of_streams(shared_data, tmp_path, run_train, run_python):
    # a model trained for 200 steps, validated by Lightning (the datamodule's val loader and
    # CharLM's validation) on 1 device x 1 stream and on 2 gloo devices x 32 and x 256 streams
    corpus = tmp_path / "c.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:120_000], encoding="utf-8")
    run = tmp_path / "run"
    run_train(run, *base(corpus, 1, 16, "data.splits=[0.8,0.2,0.0]", "data.seq_len=64", "model.hidden_size=64",
                         "optimizer.lr=1e-2", "trainer.max_steps=200", "trainer.val_check_interval=200"))
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE, encoding="utf-8")
    losses = {}
    for devices, streams in ((1, 1), (2, 32), (2, 256)):
        p = run_python(str(script), str(run / "checkpoints" / "last.ckpt"), str(corpus), str(devices), str(streams),
                       cwd=tmp_path, env={"CHARLM_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        line = next(x for x in p.stdout.splitlines() if x.startswith("VAL "))
        losses[devices * streams] = json.loads(line[4:])["val/loss"]
    assert losses[1] < 2.5, losses  # a trained model: its state carries information
    assert max(losses.values()) - min(losses.values()) < 1e-3, losses


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())


def _wandb_finished(run: Path) -> bool:
    """An offline W&B run that was finished (``wandb.finish``): its debug log records it."""
    log = (run / "logs" / "debug.log").read_text(encoding="utf-8", errors="replace")
    run_id = run.name.rsplit("-", 1)[1]
    return f"finishing run charlm/{run_id}" in log and "got exitcode: 0" in log


def test_wandb_gives_one_finished_run_under_ddp(tmp_path, small_corpus, run_train):
    """Only rank 0 logs to W&B: one offline run, finished. (Each job of a multirun is a W&B run of its
    own: test_sweeps.py.)"""
    ddp = tmp_path / "ddp"
    run_train(ddp, *base(small_corpus, 2, 4), "logger=wandb", "model.hidden_size=16", "trainer.max_steps=4",
              "trainer.val_check_interval=4", "trainer.limit_val_batches=2", "~callbacks.visualize", timeout=400)
    runs = _wandb_runs(ddp)
    assert len(runs) == 1 and _wandb_finished(runs[0]), runs
