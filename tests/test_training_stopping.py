"""charlm.training.stopping: every last.ckpt write (periodic, at a stop, after the final validation)
and the stops themselves: SIGINT or SIGTERM at any moment of a real run leaves the last.ckpt of
the last completed step, which resumes to the run never stopped."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from charlm.cli.train import train
from conftest import (
    FULL_STEPS, assert_same_run, assert_same_weights, best_files, logged, resumable_train, validations,
)


def _signal_at(sig: str, hook: str, step: int = 0) -> list[str]:
    """Overrides adding :class:`plugins.SignalAt`: the run signals itself at that moment."""
    return ["+callbacks.interrupt._target_=plugins.SignalAt", f"+callbacks.interrupt.signal={sig}",
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
def test_signal_at_any_moment_leaves_last_ckpt_of_the_last_step(compose, tmp_path, full_run, moment, run_app):
    """SIGTERM/SIGINT at a chosen moment of a real run: exit 128 + signal, last.ckpt of the last
    completed step (none before the first step: the summary says there is nothing to resume), a
    summary that names only files on disk, and resuming gives the run never stopped."""
    sig, hook, at, expect, extra = MOMENTS[moment]
    corpus, full = full_run
    run = tmp_path / "run"
    r = run_app("train", f"hydra.run.dir={run}",
                *resumable_train(corpus, FULL_STEPS, "callbacks.last_checkpoint.every_n_train_steps=100000", *extra),
                *_signal_at(sig, hook, at), cwd=tmp_path, plugins=True)
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
    assert logged(run, "val/loss") == {k: v for k, v in logged(full, "val/loss").items() if k < expect}
    if moment in ("SIGTERM-after-step-3", "SIGINT-after-step-3", "SIGTERM-during-validation"):
        # resume= replays the run's overrides, the plugin's too: disarm it (a step never reached)
        train(compose("train", tmp_path / "x", [f"resume={run}", "+callbacks.interrupt.step=-1"]))
        assert_same_run(full, run, FULL_STEPS)


def test_a_finished_run_extended_after_its_final_validation_continues_exactly(tmp_path, compose, tiny_corpus):
    """The run ends at the last batch of its first epoch (21 batches), between two scheduled
    validations: its last.ckpt is rewritten after the final validation and must still resume as a
    step-end one."""

    def run(out: Path, steps: int, *extra: str) -> None:
        train(compose("train", out, resumable_train(tiny_corpus, steps, "data=file", "callbacks.samples.length=0",
                                                    "~callbacks.visualize", *extra)))

    run(tmp_path / "full", 30)
    ext = tmp_path / "ext"
    run(ext, 21)
    assert validations(ext)[-1][0] == 21
    train(compose("train", tmp_path / "elsewhere", [f"resume={ext}", "trainer.max_steps=30"]))
    losses = logged(ext, "train/loss", once=True)
    assert losses == logged(tmp_path / "full", "train/loss", once=True) and len(losses) == 30
    assert_same_weights(tmp_path / "full", ext)
