"""Compose the real configs, every option of every group, and instantiate what they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from charlm.config import config_dir
from charlm.data.datamodule import CharDataModule
from charlm.model.rnn import CharRNN

CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_config_groups_exist():
    for group in ("data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths", "hydra"):
        assert options(group), group


@pytest.mark.parametrize("name", options("data"))
def test_data_options_instantiate(compose, tmp_path, small_corpus, name):
    overrides = [f"data={name}"]
    if name == "file":
        overrides.append(f"data.path={small_corpus}")
    cfg = compose("train", tmp_path, overrides)
    dm = instantiate(cfg.data)
    assert isinstance(dm, CharDataModule)
    assert abs(sum(dm.splits) - 1) < 1e-9
    if name != "warpeace":  # warpeace is checked in test_data; no need to prepare it twice
        dm.prepare()
        assert len(dm.vocab) > 20


@pytest.mark.parametrize("name", options("model"))
def test_model_options_instantiate(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"model={name}", "model.hidden_size=16"])
    net = CharRNN(vocab_size=65, **OmegaConf.to_container(cfg.model))
    assert net.cell == name
    logits, _ = net(torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, 65)


@pytest.mark.parametrize("opt", options("optimizer"))
@pytest.mark.parametrize("sched", options("scheduler"))
def test_optimizer_and_scheduler_options(compose, tmp_path, opt, sched):
    cfg = compose("train", tmp_path, [f"optimizer={opt}", f"scheduler={sched}"])
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = instantiate(cfg.optimizer)(params)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    out = instantiate(cfg.scheduler)(optimizer, total_steps=100)
    assert out is None or "scheduler" in out


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options_compose(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"trainer={name}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.trainer.use_distributed_sampler is False
    if name in ("default", "cpu"):
        trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
        assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options_instantiate(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"logger={name}"])
    loggers = [instantiate(c) for c in cfg.logger.values()]
    if name == "default":
        assert sorted(type(lg).__name__ for lg in loggers) == ["CSVLogger", "WandbLogger"]


def test_wandb_is_offline_by_default(compose, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose("train", tmp_path).logger.wandb.offline is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose("train", tmp_path).logger.wandb.offline is False


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_options_instantiate(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"callbacks={name}"])
    for c in cfg.callbacks.values():
        instantiate(c)


@pytest.mark.parametrize("name", options("experiment") + options("debug"))
def test_overlays_compose(compose, tmp_path, name):
    group = "experiment" if name in options("experiment") else "debug"
    cfg = compose("train", tmp_path, [f"{group}={name}"])
    # every value the overlay file sets is the composed config's (nothing later overrides it)
    own = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
    own.pop("defaults", None)
    leaves = [(k, v) for k, v in _leaves(own) if not k.startswith("hydra.")]
    assert leaves or group == "debug", f"{group}={name} sets nothing"
    raw = dict(_leaves(OmegaConf.to_container(cfg, resolve=False)))  # interpolations as written
    for key, value in leaves:
        assert raw.get(key) == value, f"{group}={name}: {key}"


@pytest.mark.parametrize("group", ["data", "model"])
def test_options_start_from_the_shared_base_not_from_a_sibling(compose, tmp_path, group):
    """Each data/model option builds on conf/_<group>.yaml (not on another option) and has its keys."""
    base = OmegaConf.load(CONF / f"_{group}.yaml")
    for name in options(group):
        assert list(OmegaConf.load(CONF / group / f"{name}.yaml").defaults) == [f"/_{group}@_here_", "_self_"], name
        cfg = compose("train", tmp_path, [f"{group}={name}"] + (["data.path=x.txt"] if name == "file" else []))
        assert list(cfg[group]) == list(base), name


def test_debug_overlays_build_on_debug_default():
    for name in options("debug"):
        if name != "default":
            assert OmegaConf.load(CONF / "debug" / f"{name}.yaml").defaults[0] == "default", name


def test_sample_and_eval_configs(compose, tmp_path):
    s = compose("sample", tmp_path, ["ckpt=x.ckpt", "temperature=0.5"])
    assert s.length == 500 and s.temperature == 0.5
    e = compose("eval", tmp_path, ["ckpt=x.ckpt", "split=test"])
    assert e.split == "test"


def test_regularisers_and_weight_decay_reach_the_model_and_optimizer(compose, tmp_path):
    cfg = compose("train", tmp_path, ["model.weight_drop=0.5", "model.hidden_dropout=0.2", "optimizer=adam",
                                      "optimizer.weight_decay=1e-5"])
    net = CharRNN(vocab_size=65, **OmegaConf.to_container(cfg.model))
    assert net.weight_drop == 0.5 and net.hidden_dropout == 0.2 and net.input_dropout == 0.0
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert instantiate(cfg.optimizer)(params).param_groups[0]["weight_decay"] == 1e-5
    for opt in options("optimizer"):
        assert "weight_decay" in compose("train", tmp_path, [f"optimizer={opt}"]).optimizer


def _leaves(node, prefix=""):
    """``(dotted key, value)`` of every leaf of a plain dict (lists are leaves)."""
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
