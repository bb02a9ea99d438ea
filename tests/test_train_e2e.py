"""A short real training on Tiny Shakespeare, then sampling and evaluation through its checkpoint."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.train import train
from charlm.evaluation.evaluate import evaluate
from charlm.sampling.sampler import sample
from conftest import FAST_TRAIN

SHORT = FAST_TRAIN + [
    "model.hidden_size=128",
    "data.batch_size=16",
    "data.seq_len=64",
    "optimizer.lr=1e-2",
    "scheduler.warmup_steps=10",
    "trainer.max_steps=150",
    "trainer.val_check_interval=75",
    "trainer.limit_val_batches=null",
    "callbacks.last_checkpoint.every_n_train_steps=75",
    "callbacks.samples.length=80",
]


def run_cli(app: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", f"charlm.cli.{app}", *args], capture_output=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once for the whole module: (output dir, final metrics)."""
    from conftest import compose_cfg

    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg("train", out, SHORT + ["seed=1"])
    metrics = train(cfg)
    return out, metrics


def test_val_loss_falls_well_below_uniform(trained):
    out, metrics = trained
    assert metrics["val/loss"] < 2.6 < math.log(65)
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2))
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-6)


def test_run_dir_contents(trained):
    out, _ = trained
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


def test_checkpoint_is_plain_and_complete(trained):
    out, _ = trained
    raw = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    entry = raw["charlm"]
    assert len(entry["vocab"]) == 65 and entry["model"]["hidden_size"] == 128
    assert entry["data"]["encoding"] == "utf-8" and raw["global_step"] == 150


def test_eval_matches_training_validation(trained):
    out, metrics = trained
    net, vocab = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.ckpt"))
    from charlm.data.cache import prepare_corpus
    from charlm.data.streams import split_bounds

    c = prepare_corpus(os.environ["CHARLM_DATA_DIR"] + "/tinyshakespeare/input.txt")
    b, e = split_bounds(c.num_chars, (0.9, 0.1, 0.0))[1]
    # the same stream layout as training's validation (batch 16, the default burn-in, the train
    # split read before val) gives the same number
    r = evaluate(net, c.ids[b:e], batch_size=16, seq_len=64, context=c.ids[:b])
    assert r["chars"] == e - b - 1
    assert r["loss"] == pytest.approx(metrics["val/loss"], abs=1e-4)


def test_val_loss_does_not_depend_on_the_number_of_streams(trained):
    # the whole val split (111,538 targets) of a trained model, scored as 1, 8, 64 and 512 streams:
    # with the default burn-in every count gives the single pass's loss to 1e-3 nats
    # (without it, 512 streams each starting from zeros cost several 1e-3 nats more)
    out, _ = trained
    net, _ = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.ckpt"))
    from charlm.data.cache import prepare_corpus
    from charlm.data.streams import split_bounds

    c = prepare_corpus(os.environ["CHARLM_DATA_DIR"] + "/tinyshakespeare/input.txt")
    b, e = split_bounds(c.num_chars, (0.9, 0.1, 0.0))[1]
    val, before = c.ids[b:e], c.ids[:b]
    losses = {g: evaluate(net, val, batch_size=g, seq_len=256, context=before)["loss"] for g in (1, 8, 64, 512)}
    assert max(losses.values()) - min(losses.values()) < 1e-3, losses


def test_sample_cli(trained):
    out, _ = trained
    ckpt = out / "checkpoints" / "last.ckpt"
    r = run_cli("sample", f"ckpt={ckpt}", "prime=ROMEO:", "length=120", "seed=3", "num_samples=2", f"hydra.run.dir={out}/s")
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode("utf-8")
    parts = text.split("--- sample ")
    assert parts[0] == "" and parts[1].startswith("1/2 ---\nROMEO:") and parts[2].startswith("2/2 ---\nROMEO:")
    assert len(text) >= 2 * 126 and (out / "s" / "samples.txt").read_text(encoding="utf-8") == text
    one = run_cli("sample", f"ckpt={ckpt}", "prime=ROMEO:", "length=20", "seed=3", f"hydra.run.dir={out}/s1")
    assert one.stdout.decode("utf-8").startswith("ROMEO:") and b"--- sample" not in one.stdout  # one sample: no header
    r2 = run_cli("sample", f"ckpt={ckpt}", "prime=ROMEO:", "length=120", "seed=3", "num_samples=2", f"hydra.run.dir={out}/s2")
    assert r2.stdout == r.stdout and len(parts) == 3


def test_eval_cli(trained, tmp_path):
    out, _ = trained
    ckpt = out / "checkpoints" / "last.ckpt"
    r = run_cli("eval", f"ckpt={ckpt}", "split=val", f"hydra.run.dir={tmp_path}/e")
    assert r.returncode == 0, r.stderr.decode()
    assert "bpc" in r.stdout.decode() and (tmp_path / "e" / "metrics.json").is_file()
    # the output line names how the text was scored: streams and burn-in
    assert "| 111,538 characters | 32 streams, burn-in 128 characters" in r.stdout.decode()
    f = tmp_path / "t.txt"
    f.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n", encoding="utf-8")
    r = run_cli("eval", f"ckpt={ckpt}", f"file={f}", "batch_size=1", "burn_in=0", f"hydra.run.dir={tmp_path}/e2")
    assert r.returncode == 0 and "nats/char" in r.stdout.decode()
    assert "| 60 characters | 1 stream, burn-in 0 characters" in r.stdout.decode(), r.stdout.decode()
    bad = tmp_path / "bad.txt"
    bad.write_text("Ça va? ½", encoding="utf-8")
    r = run_cli("eval", f"ckpt={ckpt}", f"file={bad}", f"hydra.run.dir={tmp_path}/e3")
    err = r.stderr.decode("utf-8")
    assert r.returncode == 2 and "'Ç'" in err and "'½'" in err and "Traceback" not in err


def test_cli_errors_are_clean(trained, tmp_path):
    out, _ = trained
    ckpt = out / "checkpoints" / "last.ckpt"
    for args, needle in [
        (["temperature=-1"], "temperature"),
        (["prime='Zq€'"], "'€'"),
        (["ckpt=/nonexistent.ckpt"], "does not exist"),
    ]:
        r = run_cli("sample", f"ckpt={ckpt}", *args, f"hydra.run.dir={tmp_path}/x")
        err = r.stderr.decode("utf-8")
        assert r.returncode == 2 and needle in err and "Traceback" not in err, err


def test_sample_output_is_utf8_under_c_locale(tmp_path, compose):
    text = "Привет мир 😀 café\n" * 400
    f = tmp_path / "uni.txt"
    f.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    cfg = compose("train", out, FAST_TRAIN + [f"data.path={f}", "data=file", "trainer.max_steps=10",
                                              "trainer.val_check_interval=10", "callbacks.samples.length=0"])
    train(cfg)
    r = run_cli("sample", f"ckpt={out}/checkpoints/last.ckpt", "prime='Привет'", "length=30",
                f"hydra.run.dir={tmp_path}/s", env_extra={"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": ""})
    assert r.returncode == 0, r.stderr.decode()
    s = r.stdout.decode("utf-8")  # strict: raises if the bytes are not UTF-8
    assert s.startswith("Привет") and "\\u" not in s


def test_names_model_samples_with_default_prime(tmp_path, compose):
    out = tmp_path / "names"
    cfg = compose("train", out, FAST_TRAIN + ["data=names", "trainer.max_steps=20", "trainer.val_check_interval=20"])
    train(cfg)
    net, vocab = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.ckpt"))
    assert " " not in vocab and "\n" in vocab
    text = sample(net, vocab, length=50, seed=0)[0]
    assert len(text) == 51 and set(text) <= set(vocab.chars)


# ---------------------------------------------------------------------- the final validation
def _val_rows(out: Path) -> list[tuple[int, float]]:
    """``[(optimizer step, val/loss)]`` from a run's CSV (Lightning logs a validation at step N
    under the logging step N - 1)."""
    import csv

    with open(out / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]) + 1, float(r["val/loss"])) for r in csv.DictReader(f) if r.get("val/loss")]


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
    rows = _val_rows(out)
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
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"] and not _val_rows(out)


def test_a_finished_run_extended_after_its_final_validation_continues_exactly(tmp_path, compose, shakespeare_path):
    """The run ends at the last batch of its first epoch, between two scheduled validations: its
    last.ckpt is rewritten after the final validation and must still resume as a step-end one."""
    import csv

    corpus = tmp_path / "tiny.txt"  # with 8 streams x 32 characters an epoch is 21 training batches
    corpus.write_text(shakespeare_path.read_text(encoding="utf-8")[:6_000], encoding="utf-8")

    def run(out: Path, steps: int, *extra: str) -> None:
        train(compose("train", out, FAST_TRAIN + [
            f"data.path={corpus}", "data=file", "data.splits=[0.9,0.1,0.0]", f"trainer.max_steps={steps}",
            "trainer.val_check_interval=10", "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1",
            "callbacks.last_checkpoint.every_n_train_steps=7", "model.dropout=0.2", "callbacks.samples.length=0",
            "~callbacks.visualize", *extra]))

    def losses(out: Path) -> dict[int, str]:
        with open(out / "csv" / "metrics.csv", newline="") as f:
            rows = [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
        assert len({s for s, _ in rows}) == len(rows), "a step logged twice"
        return dict(rows)

    run(tmp_path / "full", 30)
    ext = tmp_path / "ext"
    run(ext, 21)
    assert _val_rows(ext)[-1][0] == 21
    train(compose("train", tmp_path / "elsewhere", [f"resume={ext}", "trainer.max_steps=30"]))
    assert losses(ext) == losses(tmp_path / "full") and len(losses(ext)) == 30
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (tmp_path / "full", ext))
    assert all(torch.equal(a[k], b[k]) for k in a)


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
