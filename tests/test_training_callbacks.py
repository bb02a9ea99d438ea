"""charlm.training.callbacks: what the console shows during training (progress lines when the output
is not a terminal, the progress bar on one, the model summary), and the final validation: a run
validates its last weights, and everything it reports describes last.ckpt."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch

import charlm.training.callbacks as callbacks
from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.train import train
from charlm.evaluation.evaluate import evaluate
from charlm.training.callbacks import ModelSummary, ProgressBar, ProgressLog
from charlm.training.module import CharLM
from conftest import FAST_TRAIN, compose_cfg, validations


def test_progress_lines_every_n_steps_and_at_each_validation_when_not_on_a_terminal(tmp_path, small_corpus, caplog):
    assert not callbacks.is_terminal()  # pytest captures the output, as a file or pipe would
    caplog.set_level(logging.INFO, logger="charlm.training.callbacks")
    cfg = compose_cfg("train", tmp_path / "run", [*FAST_TRAIN, "data=file", f"data.path={small_corpus}", "trainer.max_steps=20",
                                                  "trainer.val_check_interval=10", "callbacks.progress_log.every_n_steps=4",
                                                  "callbacks.samples.length=0", "~callbacks.visualize"])
    assert "progress_log" in cfg.callbacks
    metrics = train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "charlm.training.callbacks"]
    train_lines = [ln for ln in lines if "train loss" in ln]
    val_lines = [ln for ln in lines if "val loss" in ln]
    pattern = r"step (\d+)/20 \(epoch 0\) \| train loss (\d+\.\d{4}) nats/char \| [\d,]+ tokens/s \| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d"
    assert [re.fullmatch(pattern, ln).group(1) for ln in train_lines] == ["4", "8", "12", "16", "20"], lines
    assert len(val_lines) == 2 and val_lines[-1].startswith("step 20/20 (epoch 0) | val loss ")
    # the numbers are the run's: the last val line is the final validation
    shown = re.search(r"val loss (\d+\.\d{4}) nats/char, bpc (\d+\.\d{4})", val_lines[-1])
    assert float(shown.group(1)) == pytest.approx(metrics["val/loss"], abs=1e-4)
    assert float(shown.group(2)) == pytest.approx(metrics["val/bpc"], abs=1e-4)


def test_on_a_terminal_the_bar_shows_progress_and_the_lines_stay_off(monkeypatch):
    trainer = L.Trainer(max_steps=10, max_epochs=-1, logger=False, enable_checkpointing=False, accelerator="cpu",
                        enable_progress_bar=False)
    log = ProgressLog()
    assert log._active(trainer)  # not a terminal here
    monkeypatch.setattr(callbacks, "is_terminal", lambda: True)
    assert not log._active(trainer) and ProgressLog(on_terminal=True)._active(trainer)
    bar = ProgressBar()
    bar.setup(trainer, None, "fit")
    assert bar.is_enabled
    # a run bounded by steps (max_epochs=-1) showed "Epoch 2/-2"
    assert bar._get_train_description(2).strip() == "Epoch 2"
    trainer.fit_loop.max_epochs = 5
    assert bar._get_train_description(2).strip() == "Epoch 2/4"
    monkeypatch.setattr(callbacks, "is_terminal", lambda: False)
    assert ProgressBar().is_disabled  # in a file it would draw nothing until the end


def test_model_summary_has_no_column_of_zero_flops(caplog):
    module = CharLM(vocab=list("abc\n"), model={"cell": "lstm", "hidden_size": 8, "num_layers": 1})
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    caplog.set_level(logging.INFO, logger="charlm.training.callbacks")
    ModelSummary().on_fit_start(trainer, module)
    text = caplog.text
    assert "net" in text and "CharRNN" in text and "Total params" in text
    assert "FLOPs" not in text and "Flops" not in text


# ----------------------------------------------------------------------------- the final validation
def _best_k_state(ckpt: dict) -> dict:
    """The best-k ``ModelCheckpoint``'s state stored in a checkpoint (not last.ckpt's own)."""
    states = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint") and v.get("best_k_models")]
    assert len(states) == 1, list(ckpt["callbacks"])
    return states[0]


@pytest.mark.parametrize(
    "overrides, val_steps",
    [
        (["trainer.max_steps=40", "trainer.val_check_interval=20"], [20, 40]),  # ends on a validation step
        (["trainer.max_steps=25", "trainer.val_check_interval=10"], [10, 20, 25]),  # ends between two
        (["trainer.max_steps=5", "trainer.val_check_interval=10"], [5]),  # ends before the first
        # bounded by epochs: one epoch of the 54,000 training characters is 210 batches of 8 x 32
        (["trainer.max_steps=-1", "trainer.max_epochs=1", "trainer.val_check_interval=1000"], [210]),
    ],
    ids=["on-a-validation-step", "between-validations", "before-the-first-validation", "max_epochs"],
)
def test_a_run_validates_its_final_weights_and_everything_describes_last_ckpt(tmp_path, compose, small_corpus, capsys,
                                                                          overrides, val_steps):
    from charlm.data.cache import prepare_corpus
    from charlm.data.streams import split_bounds
    from charlm.sweeps import objective

    out = tmp_path / "run"
    cfg = compose("train", out, FAST_TRAIN + ["data=file", f"data.path={small_corpus}", "trainer.limit_val_batches=null",
                                              "callbacks.samples.length=0", "~callbacks.visualize",
                                              "callbacks.last_checkpoint.every_n_train_steps=20", *overrides])
    metrics = train(cfg)
    printed = capsys.readouterr().out
    raw = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    last_step = raw["global_step"]
    rows = validations(out)
    assert [s for s, _ in rows] == val_steps and val_steps[-1] == last_step  # the last validation is of the last weights

    # the summary, the returned metrics and the last CSV row are last.ckpt's val loss
    final = rows[-1][1]
    assert metrics["val/loss"] == pytest.approx(final, abs=1e-6)
    assert f"final val loss (step {last_step:,}): {final:.4f} nats/char" in printed
    net, _ = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.ckpt"))
    c = prepare_corpus(small_corpus)
    b, e = split_bounds(c.num_chars, (0.9, 0.05, 0.05))[1]
    assert evaluate(net, c.ids[b:e], batch_size=8, seq_len=32, context=c.ids[:b])["loss"] == pytest.approx(final, abs=1e-4)

    # best-k files and the sweep objective include the final validation
    best = min(v for _, v in rows)
    files = sorted((out / "checkpoints").glob("step*-val_loss*.ckpt"))
    assert [int(p.name[4:10]) for p in files] == val_steps  # save_top_k=3: every validation ranks
    assert metrics["best/val_loss"] == pytest.approx(best, abs=1e-6)
    assert objective(metrics) == pytest.approx(best / math.log(2), abs=1e-6)
    assert f"last.ckpt (step {last_step:,}); best by val/loss: " + ", ".join(p.name for p in files) in printed

    # last.ckpt holds the result of the validation at its step (not the one before)
    state = _best_k_state(raw)
    assert sorted(Path(p).name for p in state["best_k_models"]) == [p.name for p in files]
    assert float(state["best_model_score"]) == pytest.approx(best, abs=1e-6)
    assert float(state["current_score"]) == pytest.approx(final, abs=1e-6)
    assert Path(state["best_model_path"]).is_file()


@pytest.mark.parametrize("off, reason", [
    ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0"),
    ("data.splits=[0.95,0.0,0.05]", "data.splits has no val split"),
], ids=["limit_val_batches=0", "no-val-split"])
def test_a_run_that_never_validates_says_so_at_start_and_in_the_summary(tmp_path, compose, small_corpus, capsys,
                                                                        caplog, off, reason):
    from charlm.sweeps import objective

    out = tmp_path / "run"
    cfg = compose("train", out, FAST_TRAIN + ["data=file", f"data.path={small_corpus}", "trainer.max_steps=12",
                                              "trainer.val_check_interval=5", "callbacks.samples.length=0",
                                              "~callbacks.visualize", off])
    with caplog.at_level("WARNING"):
        metrics = train(cfg)
    printed = capsys.readouterr().out
    assert f"this run will never validate ({reason})" in caplog.text
    assert f"no validation ({reason}): no val loss" in printed and "final val loss" not in printed
    assert "best val loss" not in printed and "checkpoints: " in printed and "last.ckpt (step " in printed and "best by val/loss" not in printed
    assert not any(k.startswith(("val/", "best/")) for k in metrics) and objective(metrics) is None
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"] and not validations(out)
