"""What the console shows during training (charlm.training.callbacks): progress lines when the
output is not a terminal, the progress bar on one, the model summary."""

from __future__ import annotations

import logging
import re

import lightning as L
import pytest

import charlm.training.callbacks as callbacks
from charlm.cli.train import train
from charlm.training.callbacks import ModelSummary, ProgressBar, ProgressLog
from charlm.training.module import CharLM
from conftest import FAST_TRAIN, compose_cfg


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
