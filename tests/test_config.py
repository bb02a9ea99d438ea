"""charlm.config and the configs in conf/ it points to: every option of every group composes and
instantiates what it describes, the recipes (conf/experiment) and debug overlays, the sweep and
launcher configs, and the ``charlm.job_dirname`` resolver that names a multirun's job dirs."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import ReduceLROnPlateau

from charlm.checkpoint import load_checkpoint
from charlm.cli.train import train
from charlm.config import config_dir, job_dirname
from charlm.data.datamodule import CharDataModule
from charlm.model.rnn import CharRNN
from conftest import RECIPE_TRAIN

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
    assert_option_applied(cfg, "optimizer", opt)
    assert_option_applied(cfg, "scheduler", sched)
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = instantiate(cfg.optimizer)(params)
    assert type(optimizer).__name__ == cfg.optimizer._target_.rsplit(".", 1)[1]
    group = optimizer.param_groups[0]
    for key, value in OmegaConf.to_container(cfg.optimizer).items():  # every setting reaches the optimizer
        if not key.startswith("_"):
            assert group[key] == (tuple(value) if isinstance(value, list) else value), key
    out = instantiate(cfg.scheduler)(optimizer, total_steps=400)
    assert out["name"] == "lr" and out["interval"] == ("epoch" if sched in ("charrnn", "plateau") else "step")
    lr, s = cfg.optimizer.lr, cfg.scheduler
    # the settings the README gives each schedule: 100 warm-up steps, x0.97 per epoch after 10,
    # x0.5 when val/loss has not improved for more than 2 validations
    documented = {"cosine": {"warmup_steps": 100}, "charrnn": {"decay_rate": 0.97, "decay_after": 10},
                  "plateau": {"factor": 0.5, "patience": 2}, "none": {}}[sched]
    assert {k: s[k] for k in documented} == documented
    if sched == "plateau":  # stepped with val/loss by the LightningModule
        sch = out["scheduler"]
        assert isinstance(sch, ReduceLROnPlateau) and out["monitor"] == "val/loss"
        assert (sch.factor, sch.patience, sch.min_lrs) == (s.factor, s.patience, [s.min_lr])
        return
    # the learning rate of each of 400 steps (or epochs), as the schedule's settings give it
    if sched == "cosine":
        def want(k):
            if k < s.warmup_steps:
                return lr * (k + 1) / s.warmup_steps
            progress = (k - s.warmup_steps) / (400 - s.warmup_steps)
            return lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    elif sched == "charrnn":
        def want(k):
            return lr * s.decay_rate ** max(0, k - s.decay_after + 1)
    else:
        def want(k):
            return lr
    for k in range(401):
        assert group["lr"] == pytest.approx(want(k), rel=1e-9), (sched, k)
        optimizer.step()
        out["scheduler"].step()
    if sched == "cosine":
        assert group["lr"] == pytest.approx(lr * s.min_lr_ratio)


#: (accelerator, devices, precision) of each trainer option (README, Configuration): bf16 on GPUs,
#: ddp on all GPUs of a node, ddp_cpu as 2 CPU processes.
TRAINERS = {"default": ("auto", 1, "32-true"), "cpu": ("cpu", 1, "32-true"), "gpu": ("gpu", 1, "bf16-mixed"),
            "ddp": ("gpu", -1, "bf16-mixed"), "ddp_cpu": ("cpu", 2, "32-true")}


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options_compose(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"trainer={name}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.trainer.use_distributed_sampler is False
    assert_option_applied(cfg, "trainer", name)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == TRAINERS[name]
    if name.startswith("ddp"):
        assert cfg.trainer.strategy._target_.endswith(".DDPStrategy") and cfg.trainer.num_nodes == 1
        assert cfg.trainer.strategy.process_group_backend == ("gloo" if name == "ddp_cpu" else "nccl")
    if name in ("default", "cpu"):  # the others need GPUs or start processes
        trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
        assert trainer.max_steps == cfg.trainer.max_steps and trainer.val_check_interval == cfg.trainer.val_check_interval
        assert type(trainer.accelerator).__name__ == "CPUAccelerator" and trainer.num_devices == 1
        assert trainer.gradient_clip_val == cfg.trainer.gradient_clip_val and trainer.precision == cfg.trainer.precision


#: The loggers each logger option gives.
LOGGERS = {"csv": ["CSVLogger"], "wandb": ["WandbLogger"], "default": ["CSVLogger", "WandbLogger"], "none": []}


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options_instantiate(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"logger={name}"])
    assert_option_applied(cfg, "logger", name)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert sorted(type(lg).__name__ for lg in loggers) == LOGGERS[name]
    for lg in loggers:  # both write into the run dir
        assert Path(lg.save_dir) == tmp_path, type(lg).__name__


def test_wandb_is_offline_by_default(compose, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose("train", tmp_path).logger.wandb.offline is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose("train", tmp_path).logger.wandb.offline is False


#: The callback each callbacks option gives (README, Configuration: default is all of them, one
#: option alone keeps only that one).
CALLBACKS = {"model_checkpoint": "ModelCheckpoint", "last_checkpoint": "LastCheckpoint", "samples": "SampleText",
             "visualize": "VisualizeCells", "lr_monitor": "LearningRateMonitor", "model_summary": "ModelSummary",
             "rich_progress_bar": "ProgressBar", "progress_log": "ProgressLog"}


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_options_instantiate(compose, tmp_path, name):
    cfg = compose("train", tmp_path, [f"callbacks={name}"])
    assert_option_applied(cfg, "callbacks", name)
    want = CALLBACKS if name == "default" else {} if name == "none" else {name: CALLBACKS[name]}
    callbacks = {key: instantiate(c) for key, c in cfg.callbacks.items()}
    assert {key: type(cb).__name__ for key, cb in callbacks.items()} == want
    assert all(isinstance(cb, L.Callback) for cb in callbacks.values())
    if "model_checkpoint" in callbacks:  # the 3 best by val/loss; last.ckpt is last_checkpoint's
        cb = callbacks["model_checkpoint"]
        assert (cb.monitor, cb.mode, cb.save_top_k, cb.save_last) == ("val/loss", "min", 3, False)
        assert Path(cb.dirpath) == tmp_path / "checkpoints"
    if "lr_monitor" in callbacks:  # the rate of every step, logged as lr
        assert callbacks["lr_monitor"].logging_interval == "step"


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
    for opt in options("optimizer"):  # every optimizer takes it
        cfg = compose("train", tmp_path, [f"optimizer={opt}", "optimizer.weight_decay=1e-5"])
        assert instantiate(cfg.optimizer)(params).param_groups[0]["weight_decay"] == 1e-5, opt


# ----------------------------------------------------------------------------- recipes (conf/experiment)
RECIPES = ["tinyshakespeare", "warpeace", "pycode", "names"]


#: A GPU recipe on the CPU.
ON_CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true"]


def test_every_recipe_has_a_cpu_and_a_gpu_variant():
    have = set(options("experiment"))
    for r in RECIPES:
        assert {r, f"{r}_gpu"} <= have


@pytest.mark.parametrize("name", RECIPES)
def test_cpu_recipe_settings(compose, tmp_path, name, shared_data):
    cfg = compose("train", tmp_path, [f"experiment={name}"])
    assert cfg.data.name == name and cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    d, h, m, s = (int(x) for x in cfg.trainer.max_time.split(":"))  # DD:HH:MM:SS
    minutes = d * 1440 + h * 60 + m + s / 60
    assert (minutes == 10) if name == "tinyshakespeare" else (30 <= minutes <= 60)
    assert cfg.model.hidden_size >= 128 and cfg.trainer.max_steps > 1000
    if name != "pycode":  # built from the standard library, not a file of the shared data
        assert (shared_data / name / cfg.data.filename).is_file()
    assert isinstance(instantiate(cfg.data), CharDataModule)  # the data module builds from it
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
    cfg = compose("train", out, [f"experiment={name}"] + RECIPE_TRAIN + extra)
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] > 0
    # the recipe's network and corpus are those of the run's checkpoint
    entry = load_checkpoint(out / "checkpoints" / "last.ckpt")["charlm"]
    model = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if v is not None}  # None: a default it derives
    assert {k: v for k, v in entry["model"].items() if k in model} == {k: v for k, v in model.items() if k in entry["model"]}
    assert {"cell", "num_layers", "hidden_size", "dropout"} <= entry["model"].keys() and entry["model"]["hidden_size"] == 32
    assert (entry["data"]["name"], entry["data"]["batch_size"], entry["data"]["seq_len"]) == (name.removesuffix("_gpu"), 4, 16)


def test_experiment_charrnn_matches_char_rnn(compose, tmp_path):
    cfg = compose("train", tmp_path, ["experiment=charrnn"])
    assert (cfg.model.cell, cfg.model.num_layers, cfg.model.hidden_size, cfg.model.dropout) == ("lstm", 2, 128, 0.0)
    assert cfg.optimizer._target_ == "torch.optim.RMSprop" and cfg.optimizer.lr == 2e-3 and cfg.optimizer.alpha == 0.95
    assert cfg.scheduler.decay_rate == 0.97 and cfg.scheduler.decay_after == 10
    assert (cfg.data.seq_len, cfg.data.batch_size) == (50, 50)
    assert (cfg.trainer.gradient_clip_algorithm, cfg.trainer.gradient_clip_val) == ("value", 5.0)


# ----------------------------------------------------------------------------- debug overlays
def test_debug_overlays_compose(compose, tmp_path):
    cfg = compose("train", tmp_path, ["debug=overfit"])
    assert cfg.trainer.overfit_batches > 0 and cfg.model.dropout == 0.0
    assert cfg.scheduler._target_.endswith("constant")
    cfg = compose("train", tmp_path, ["debug=profiler"])
    prof = instantiate(cfg.trainer.profiler)
    assert type(prof).__name__ == "SimpleProfiler"
    cfg = compose("train", tmp_path, ["debug=fdr"])
    assert cfg.trainer.fast_dev_run is True


@pytest.mark.slow
def test_debug_overfit_drives_the_train_loss_towards_zero(compose, tmp_path):
    from charlm.cli.train import train

    cfg = compose("train", tmp_path, ["debug=overfit", "model.hidden_size=64", "model.num_layers=1",
                                      "data.batch_size=4", "data.seq_len=16", "trainer.overfit_batches=1",
                                      "trainer.max_steps=120", "trainer.val_check_interval=60", "trainer.log_every_n_steps=10",
                                      "trainer.enable_model_summary=false", "~callbacks.rich_progress_bar", "callbacks.samples.length=0"])
    train(cfg)
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if r.get("train/loss")]
    first, last = float(rows[0]["train/loss"]), float(rows[-1]["train/loss"])
    assert last < 0.1 and last < first / 20, (first, last)


# ----------------------------------------------------------------------------- sweeps and launchers
def test_job_dirname_is_bounded_unique_and_flat():
    long = ",".join(f"trainer.option_{i}=value_{i}" for i in range(40))
    a, b = job_dirname(0, long), job_dirname(1, long)
    assert len(a) <= 120 and a != b and a.startswith("0_trainer.option_0")
    assert job_dirname(3, long + "x") != job_dirname(3, long)  # the hash tells cut names apart
    assert job_dirname(2, "data.path=/a/b.txt") == "2_data.path=_a_b.txt"
    assert job_dirname(5, "") == "5"


def test_sweep_subdir_uses_job_dirname(compose, tmp_path):
    cfg = compose("train", tmp_path, ["model.hidden_size=128"])
    assert "${charlm.job_dirname:" in OmegaConf.to_yaml(cfg.hydra.sweep)
    assert "%f" in cfg.hydra.sweep.dir or cfg.hydra.sweep.dir[-6:].isdigit()  # microseconds
    assert any(cb._target_ == "charlm.sweeps.JobReport" for cb in cfg.hydra.callbacks.values())


def test_hparams_search_optuna_composes_and_instantiates(compose, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose("train", tmp_path, ["hparams_search=optuna", "data=names"])
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper")
    assert sw.direction == "minimize" and sw.max_failure_rate == 1.0
    assert sw.storage == "sqlite:///./outputs/train/optuna/charlm-names.db"
    assert str(cfg.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
    assert set(sw.params) == {"optimizer.lr", "model.hidden_size", "model.dropout"}
    sweeper = instantiate(sw)
    grid = compose("train", tmp_path, ["hparams_search=optuna_grid"]).hydra.sweeper
    assert grid.sampler._target_.endswith("GridSampler") and grid.params is None
    # the grid's choice(...) parameters would clash with the TPE study's intervals: a study of its own
    assert grid.study_name == "charlm-tinyshakespeare-grid"
    assert grid.storage == "sqlite:///./outputs/train/optuna/charlm-tinyshakespeare-grid.db"
    assert type(sweeper).__name__ == "OptunaSweeper"


def test_launcher_joblib_composes_and_instantiates(compose, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = compose("train", tmp_path, ["launcher=joblib"])
    assert cfg.hydra.launcher.n_jobs == 2
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"


def test_launcher_slurm_composes_and_instantiates(compose, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose("train", tmp_path, ["launcher=slurm", "hydra.launcher.partition=gpu"])
    lc = cfg.hydra.launcher
    assert lc._target_.endswith("SlurmLauncher")
    assert lc.partition == "gpu" and lc.gpus_per_node == 1 and lc.timeout_min == 240
    assert lc.submitit_folder.endswith("/.submitit/%j")
    launcher = instantiate(lc)
    assert type(launcher).__name__ == "SlurmLauncher"


def option_values(group: str, name: str) -> dict:
    """``{dotted key: value}`` that conf/<group>/<name>.yaml sets, its own and those of the
    options of the same group it builds on (its ``defaults`` list)."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
    out: dict = {}
    for base in own.pop("defaults", None) or []:
        if isinstance(base, str) and base != "_self_" and not base.startswith(("/", "override")):
            out.update(option_values(group, base))
    out.update(_leaves(own))
    return out


def assert_option_applied(cfg, group: str, name: str) -> None:
    """Every value ``<group>=<name>`` sets is the composed config's (nothing later overrides it)."""
    raw = dict(_leaves(OmegaConf.to_container(cfg[group], resolve=False)))  # interpolations as written
    for key, value in option_values(group, name).items():
        assert raw.get(key) == value, f"{group}={name}: {key}"


def _leaves(node, prefix=""):
    """``(dotted key, value)`` of every leaf of a plain dict (lists are leaves)."""
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
