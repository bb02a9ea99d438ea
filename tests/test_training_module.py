"""charlm.training.module: the training step and validation (the loss in nats, bpc and perplexity
from it), and what a non-finite loss or gradient norm does (stop naming the step, or skip it)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from charlm.errors import CharLMError
from conftest import TINY_TRAIN, assert_user_error, last_ckpt, train_tiny


def test_val_loss_falls_well_below_uniform(trained_run):
    out, metrics = trained_run
    assert metrics["val/loss"] < 2.6 < math.log(65)
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2))
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-6)


def _all_finite(path: Path) -> bool:
    ck = torch.load(path, weights_only=True)
    return all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_nonfinite_loss_or_gradient_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, small_corpus, caplog, run_app):
    data = ["data=file", f"data.path={small_corpus}", "trainer.max_steps=10", "trainer.val_check_interval=20"]
    grad = ["+callbacks.poison._target_=plugins.PoisonGradient", "+callbacks.poison.step=6"]
    weight = ["+callbacks.poison._target_=plugins.PoisonWeight", "+callbacks.poison.step=6"]
    # a NaN gradient: stop, naming the step; last.ckpt is still the good one of step 5
    out = tmp_path / "grad"
    with pytest.raises(CharLMError, match=r"non-finite gradient norm \(nan\) at step 6"):
        train_tiny(out, *data, *grad)
    assert torch.load(last_ckpt(out), weights_only=True)["global_step"] == 5 and _all_finite(last_ckpt(out))
    # ... or skip that one optimizer step and go on
    caplog.set_level("WARNING", logger="charlm")
    out = tmp_path / "grad_skip"
    train_tiny(out, *data, *grad, "nonfinite=skip")
    assert "step 6: non-finite gradient norm" in caplog.text
    assert torch.load(last_ckpt(out), weights_only=True)["global_step"] == 10 and _all_finite(last_ckpt(out))
    # a diverged weight: the loss is non-finite; stop naming the step, last good checkpoint kept
    out = tmp_path / "weight"
    with pytest.raises(CharLMError, match=r"non-finite training loss \((nan|inf)\) at step 6"):
        train_tiny(out, *data, *weight)
    assert torch.load(last_ckpt(out), weights_only=True)["global_step"] == 5 and _all_finite(last_ckpt(out))
    # skipping cannot heal an Inf weight: the next checkpoint is refused, the good one stays
    out = tmp_path / "weight_skip"
    with pytest.raises(CharLMError, match=r"refusing to write a checkpoint at step 10: parameters \['net.decoder.bias'\]"):
        train_tiny(out, *data, *weight, "nonfinite=skip")
    assert "step 6: non-finite training loss" in caplog.text
    assert torch.load(last_ckpt(out), weights_only=True)["global_step"] == 5 and _all_finite(last_ckpt(out))
    assert not list((tmp_path / "weight_skip" / "checkpoints").glob("*.tmp"))
    # on the command line: exit status 2, the message, no traceback
    r = run_app("train", *TINY_TRAIN, *data, *grad, f"hydra.run.dir={tmp_path / 'cli'}", plugins=True, cwd=tmp_path)
    assert_user_error(r, "non-finite gradient norm (nan) at step 6", "nonfinite=skip")
