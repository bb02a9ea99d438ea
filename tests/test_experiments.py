"""The recipes (conf/experiment/*): each composes and trains 2 steps on the CPU at a tiny size."""

from __future__ import annotations

import math

import pytest

from charlm.cli.train import train
from test_configs import options

RECIPES = ["tinyshakespeare", "warpeace", "pycode", "names"]
TINY = [
    "model.hidden_size=32",
    "data.batch_size=4",
    "data.seq_len=16",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "callbacks.samples.length=0",
    "~callbacks.rich_progress_bar",
    "~callbacks.visualize",
    "logger=csv",
]
ON_CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true"]


def test_every_recipe_has_a_cpu_and_a_gpu_variant():
    have = set(options("experiment"))
    for r in RECIPES:
        assert {r, f"{r}_gpu"} <= have


@pytest.mark.parametrize("name", RECIPES)
def test_cpu_recipe_settings(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"experiment={name}"])
    assert cfg.data.name == name and cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    d, h, m, s = (int(x) for x in cfg.trainer.max_time.split(":"))  # DD:HH:MM:SS
    minutes = d * 1440 + h * 60 + m + s / 60
    assert (minutes == 10) if name == "tinyshakespeare" else (30 <= minutes <= 60)
    gpu = compose("train", tmp_path, [f"experiment={name}_gpu"])
    assert gpu.data.name == name and gpu.trainer.accelerator == "gpu" and gpu.trainer.precision == "bf16-mixed"
    if name == "warpeace":  # the paper's setting: 80/10/10, LSTMs up to 3x512 with dropout
        for c in (cfg, gpu):
            assert list(c.data.splits) == [0.8, 0.1, 0.1] and c.model.cell == "lstm"
            assert c.model.hidden_size <= 512 and c.model.num_layers <= 3 and c.model.dropout > 0
        assert (gpu.model.num_layers, gpu.model.hidden_size) == (3, 512)


@pytest.mark.parametrize("name", RECIPES + [f"{r}_gpu" for r in RECIPES])
def test_recipe_trains_two_steps_on_cpu(compose, tmp_path, name):
    extra = ON_CPU if name.endswith("_gpu") else []
    if name == "warpeace":  # the AWD-LSTM regularisers through the real training loop too
        extra = ["model.weight_drop=0.3", "model.hidden_dropout=0.2", "model.input_dropout=0.1",
                 "model.output_dropout=0.1", "model.embedding_dropout=0.05"]
    out = tmp_path / "run"
    metrics = train(compose("train", out, [f"experiment={name}"] + TINY + extra))
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] > 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
