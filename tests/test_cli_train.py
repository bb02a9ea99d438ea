"""charlm-train (charlm.cli.train): its options checked before any work, the run it builds (loggers,
callbacks, the intervals fitted to a short run), what a run dir holds, the end-of-training summary,
the quiet console, and what it logs to W&B (offline, read back from the run's .wandb file)."""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from charlm.cli.train import train
from charlm.errors import CharLMError
from conftest import (
    CLI_TRAIN, EXTRA_TEXT, FAST_TRAIN, TINY_TRAIN, compose_cfg, composed, last_ckpt, resumable_train, train_tiny, without,
)
from wandb_files import read_wandb_run


@pytest.mark.parametrize("typed,message", [
    (["seed=abc"], "seed=abc must be an integer"),
    (["data.batch_size=2.5"], "data.batch_size=2.5 must be an integer >= 1"),
    (["trainer.max_steps=abc"], "trainer.max_steps=abc must be an integer >= -1"),
    (["stop_after_steps=1.5"], "stop_after_steps=1.5 must be an integer >= 1 (or null: train to the end)"),
    (["model.dropout=1"], "model.dropout=1 must be a finite number >= 0 and < 1"),
    (["optimizer.lr=abc"], "optimizer.lr=abc must be a finite number >= 0"),
    (["trainer.val_check_interval=2.5"], "trainer.val_check_interval=2.5 must be an integer >= 1, or a fraction in (0, 1]"),
    (["trainer.accelerator=gpu7"], "trainer: You selected an invalid accelerator name: `accelerator='gpu7'`"),
    (["trainer.devices=gpu7"], "trainer: `devices` selected with `CPUAccelerator` should be an int > 0"),
    (["data.shuffle_lines=true"], "data.shuffle_lines=true must be an integer >= 0 (or null: the file's line order)"),
    (["data=file"], "no corpus given: set data.path=<text file>"),
])
def test_every_option_of_train_is_checked(tmp_path, typed, message):
    with pytest.raises(CharLMError) as e:
        train(composed("train", tmp_path, *TINY_TRAIN, *typed))
    assert str(e.value).startswith(message), str(e.value)


def test_ckpt_path_is_the_deprecated_name_of_ckpt(compose, tmp_path, tiny_corpus, caplog):
    """charlm-train's checkpoint option is ckpt=, as in the other apps; ckpt_path= still works for
    one release, with a warning, and errors name the option given; both at once is an error."""
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(CharLMError, match=r"^ckpt_path=.*nope\.ckpt: no such"):
        train(compose("train", tmp_path / "old", resumable_train(tiny_corpus, 4, f"ckpt_path={missing}")))
    assert any("ckpt_path= is deprecated" in r.getMessage() and f"use ckpt={missing}" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with pytest.raises(CharLMError, match=r"^ckpt=.*nope\.ckpt: no such"):
        train(compose("train", tmp_path / "new", resumable_train(tiny_corpus, 4, f"ckpt={missing}")))
    assert not any("deprecated" in r.getMessage() for r in caplog.records)
    with pytest.raises(CharLMError, match="one option"):
        train(compose("train", tmp_path / "both", resumable_train(tiny_corpus, 4, f"ckpt={missing}", f"ckpt_path={missing}")))


def test_ckpt_onto_other_splits_warns_that_val_and_test_hold_trained_text(compose, tmp_path, tiny_corpus, caplog):
    first = tmp_path / "first"
    train(compose("train", first, resumable_train(tiny_corpus, 4)))
    caplog.set_level("WARNING", logger="charlm")
    train(compose("train", tmp_path / "same", resumable_train(tiny_corpus, 8, f"ckpt={last_ckpt(first)}")))
    assert "other splits" not in caplog.text
    train(compose("train", tmp_path / "other", resumable_train(tiny_corpus, 8, f"ckpt={last_ckpt(first)}", "data.shuffle_lines=1")))
    assert "other splits (data.splits=[0.9, 0.1, 0.0], data.shuffle_lines=None) than this run's" in caplog.text
    assert "data.shuffle_lines=1): val and test now hold text the checkpoint has trained on" in caplog.text


def test_logger_none_trains_without_the_learning_rate_monitor(tmp_path, small_corpus):
    cfg = compose_cfg("train", tmp_path / "run", [*without(TINY_TRAIN, "logger"), "logger=none", "data=file",
                                                  f"data.path={small_corpus}"])
    assert "lr_monitor" in cfg.callbacks and not cfg.logger
    metrics = train(cfg)  # LearningRateMonitor with no logger made Lightning refuse to start
    assert math.isfinite(metrics["val/loss"])
    assert last_ckpt(tmp_path / "run").is_file()
    assert not (tmp_path / "run" / "csv").exists() and not (tmp_path / "run" / "wandb").exists()  # nothing logged


def test_a_run_shorter_than_the_intervals_still_validates_logs_and_checkpoints(tmp_path, compose, caplog):
    """`charlm-train trainer.max_steps=6` with the default intervals (validation and last.ckpt
    every 250 steps, metrics every 25) writes its val loss, samples, a best checkpoint, last.ckpt
    and train metrics: it validates after its last step, and log_every_n_steps is cut to the
    run's length, with a note (metrics.csv had no train row)."""
    intervals = ("trainer.val_check_interval", "trainer.log_every_n_steps", "callbacks.last_checkpoint.every_n_train_steps")
    out = tmp_path / "short"
    cfg = compose("train", out, [o for o in FAST_TRAIN if o.split("=")[0] not in intervals] + ["trainer.max_steps=6"])
    assert cfg.trainer.val_check_interval == 250 and cfg.trainer.log_every_n_steps == 25
    caplog.set_level("INFO", logger="charlm")
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["best/val_bpc"])
    assert "trainer.log_every_n_steps=25 is longer than the run (trainer.max_steps=6)" in caplog.text
    rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_rows = [r for r in rows[1:] if r.split(",")[header.index("val/loss")]]
    train_rows = [r for r in rows[1:] if r.split(",")[header.index("train/loss")]]
    assert len(val_rows) == 1 and len(train_rows) >= 1
    assert "### step=6 " in (out / "samples.txt").read_text(encoding="utf-8")
    assert [p.name for p in (out / "checkpoints").glob("step000006-val_loss*.ckpt")]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert (out / "visualize" / "cells.html").is_file()


# ----------------------------------------------------------------------------- the run dir and the summary
def test_run_dir_contents(trained_run):
    out, _ = trained_run
    ckpts = out / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    best = sorted(p.name for p in ckpts.glob("step*-val_loss*.ckpt"))
    assert len(best) == 2 and best[0].startswith("step000075-val_loss")
    samples = (out / "samples.txt").read_text(encoding="utf-8")
    assert samples.count("### step=") == 4  # 2 validations x 2 temperatures
    rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("train/loss", "val/loss", "val/bpc", "val/ppl", "train/grad_norm", "train/tokens_per_sec", "lr"):
        assert key in header, key


def test_end_of_training_summary_prints_the_sample_and_paths_verbatim(tmp_path, small_corpus, capsys, monkeypatch):
    import charlm.sampling.sampler as sampler

    generated = "FOO :x: [bold]BAR[/bold] :smile:"
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: [generated])  # text a model could generate
    out = tmp_path / "run[red]:x:"
    train_tiny(out, "data=file", f"data.path={small_corpus}")
    printed = capsys.readouterr().out
    assert generated in printed  # no emoji for :x:, no markup eaten
    assert f"run dir:     {out}" in printed and "\u274c" not in printed


def test_summary_prints_paths_relative_to_the_current_directory(tmp_path, compose, capsys, monkeypatch):
    """The README shows `run dir:     outputs/train/runs/...`: paths under the current directory
    are printed relative to it (they were absolute)."""
    monkeypatch.chdir(tmp_path)
    cfg = compose("train", tmp_path / "outputs" / "train" / "runs" / "r1", FAST_TRAIN + ["trainer.max_steps=4"])
    train(cfg)
    printed = capsys.readouterr().out
    assert "run dir:     outputs/train/runs/r1\n" in printed
    assert "sample it:   charlm-sample ckpt=outputs/train/runs/r1/checkpoints/last.ckpt" in printed
    assert str(tmp_path) not in printed


def test_lightning_product_tips_are_not_printed(tmp_path):
    import lightning as L

    from charlm.cli.train import quiet_third_party

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    filters, level = rank_zero.filters[:], rank_zero.level
    rank_zero.filters.clear()
    rank_zero.addHandler(handler)
    rank_zero.setLevel(logging.INFO)
    try:
        L.Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
        assert any(m.startswith("💡 Tip") for m in seen)  # Lightning's litlogger advert
        seen.clear()
        quiet_third_party()  # charlm-train and the benchmarks call it
        L.Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
        assert seen and not any("Tip" in m for m in seen), seen
    finally:
        rank_zero.removeHandler(handler)
        rank_zero.filters[:] = filters
        rank_zero.setLevel(level)


def _printed(pattern: str, text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(pattern, text)]

def _paste(run_app, line: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run a printed ``charlm-<app> ...`` line as a shell would split it."""
    argv = shlex.split(line)
    assert argv[0].startswith("charlm-")
    return run_app(argv[0].removeprefix("charlm-"), *argv[1:], *extra, cwd=cwd)

@pytest.mark.slow
def test_a_multirun_redirected_to_a_file_shows_progress_and_its_printed_commands_paste_back(tmp_path, shared_data, run_app):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:30_000] + EXTRA_TEXT,
                      encoding="utf-8")
    log = tmp_path / "run.log"
    args = ["-m", "data=file", f"data.path={corpus}", "data.batch_size=4", "data.seq_len=16", "model.hidden_size=32",
            "model.num_layers=1", "trainer.max_steps=40", "trainer.val_check_interval=10", "trainer.limit_val_batches=2",
            "callbacks.progress_log.every_n_steps=5", "callbacks.samples.length=0", "~callbacks.visualize",
            "stop_after_steps=20", "seed=3"]
    with open(log, "w") as f:  # charlm-train > run.log 2>&1: no terminal
        r = run_app("train", *args, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env={"WANDB_SILENT": "false"})
    text = log.read_text(encoding="utf-8")
    assert r.returncode == 0, text[-3000:]
    (job,) = [p for p in (tmp_path / "outputs" / "train" / "multiruns").glob("*/*") if p.is_dir()]
    assert "data.batch_size=4," in job.name
    # progress: every 5 steps and at each validation, with what each number is
    steps = re.findall(r"step (\d+)/40 \(epoch \d+\) \| train loss \d+\.\d{4} nats/char \| [\d,]+ tokens/s \| elapsed \d+:\d\d:\d\d \| ETA", text)
    assert steps == ["5", "10", "15", "20"], text[-3000:]
    assert len(re.findall(r"step (10|20)/40 \(epoch \d+\) \| val loss \d\.\d{4} nats/char, bpc \d\.\d{4} \| elapsed", text)) == 2
    assert len(re.findall(r"\| train loss .* tokens/s", (job / "train.log").read_text(encoding="utf-8"))) == 4
    assert "Total params" in text  # the model summary, without its column of zero FLOPs
    for noise in ("anonymous setting", "FLOPs", "Total Flops", "Tip:", "sync_dist", "/-2", "Trainer already configured"):
        assert noise not in text, noise
    # every command it printed runs as printed
    (sample_line,) = _printed(r"sample it:\s+(charlm-sample .*)", text)
    (resume_line,) = _printed(r"Continue with: (charlm-train .*)", text)
    rel = str(job.relative_to(tmp_path))  # printed relative to the current directory
    assert rel in sample_line and rel in resume_line and str(tmp_path) not in sample_line + resume_line
    s = _paste(run_app, sample_line, tmp_path)
    assert s.returncode == 0 and len(s.stdout) == 500 + 2, s.stderr[-2000:]  # default prime "\n" + 500 + "\n"
    prime = "KING: O (my lord), It's here"
    s = _paste(run_app, sample_line, tmp_path, f"prime={prime}", "length=3")
    assert s.returncode == 0 and s.stdout.startswith(prime) and len(s.stdout) == len(prime) + 3 + 1, s.stderr[-2000:]
    r = _paste(run_app, resume_line, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert OmegaConf.load(job / "job_status.yaml").status == "COMPLETED"
    assert "charlm: training finished" in r.stdout and "steps: 40" in r.stdout


# ----------------------------------------------------------------------------- W&B
@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, run_app):
    cwd = tmp_path_factory.mktemp("wandb")
    res = run_app("train", *CLI_TRAIN, "logger=default", "logger.wandb.tags=[smoke]", cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = list((cwd / "outputs" / "train" / "runs").iterdir())
    return run_dir, read_wandb_run(run_dir)


@pytest.mark.slow
def test_offline_run_has_metrics_on_the_step_axis(wandb_run):
    _, run = wandb_run
    keys = set().union(*run["history"])
    for k in ["train/loss", "val/loss", "val/bpc", "val/ppl", "train/grad_norm", "train/tokens_per_sec", "lr"]:
        assert k in keys, f"{k} missing from the W&B history ({sorted(keys)})"
    # every metric row carries Lightning's step axis (trainer/global_step)
    for row in run["history"]:
        if "val/bpc" in row or "train/loss" in row:
            assert "trainer/global_step" in row
    val_steps = [r["trainer/global_step"] for r in run["history"] if "val/bpc" in r]
    assert val_steps == sorted(val_steps) and len(val_steps) == 2


@pytest.mark.slow
def test_offline_run_has_config_summary_tags_and_name(wandb_run):
    run_dir, run = wandb_run
    cfg = run["config"]
    assert cfg["model"]["hidden_size"] == 32 and cfg["data"]["seq_len"] == 16
    assert cfg["num_parameters"] > 0
    s = run["summary"]
    assert s["num_parameters"] == cfg["num_parameters"]
    best = min(r["val/bpc"] for r in run["history"] if "val/bpc" in r)
    assert s["best/val_bpc"] == pytest.approx(best, rel=1e-5)
    assert {"smoke", "tinyshakespeare", "lstm"} <= set(run["tags"])
    assert "model.hidden_size=32" in run["name"]  # named by its overrides
    assert run["exit_code"] == 0


@pytest.mark.slow
def test_offline_run_has_samples_table_over_steps(wandb_run):
    _, run = wandb_run
    tables = [r for r in run["history"] if r.get("samples/_type") == "table-file"]
    assert len(tables) == 2  # one per validation
    last = run["files_dir"] / tables[-1]["samples/path"]
    data = json.loads(last.read_text(encoding="utf-8"))
    assert data["columns"] == ["step", "temperature", "text"]
    steps = sorted({row[0] for row in data["data"]})
    assert len(steps) == 2 and all(len(row[2]) >= 40 for row in data["data"])
