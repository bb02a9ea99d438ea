"""Config groups of sweeps and overlays: they compose, and their launchers/sweepers instantiate."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from charlm.config import job_dirname


def test_job_dirname_is_bounded_unique_and_flat():
    long = ",".join(f"trainer.option_{i}=value_{i}" for i in range(40))
    a, b = job_dirname(0, long), job_dirname(1, long)
    assert len(a) <= 120 and a != b and a.startswith("0_trainer.option_0")
    assert job_dirname(3, long + "x") != job_dirname(3, long)  # the hash tells cut names apart
    assert job_dirname(2, "data.path=/a/b.txt") == "2_data.path=_a_b.txt"
    assert job_dirname(5, "") == "5"


def test_wandb_runs_of_a_seed_only_sweep_have_distinct_names_holding_the_swept_key(compose, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from charlm.sweeps import name_wandb_run

    names = []
    for num, seed in enumerate([1, 2]):
        overrides = [f"seed={seed}", "trainer.max_steps=10"]
        cfg = compose("train", tmp_path / str(num), overrides)
        with read_write(cfg.hydra), open_dict(cfg.hydra):  # as Hydra sets a multirun job (override_dirname leaves seed out)
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = num
            cfg.hydra.overrides.task = overrides
            cfg.hydra.job.override_dirname = "trainer.max_steps=10"
        HydraConfig.instance().set_config(cfg)
        name_wandb_run(cfg)
        names.append(cfg.logger.wandb.name)
    assert names == ["seed=1,trainer.max_steps=10", "seed=2,trainer.max_steps=10"]


def test_job_report_in_a_single_run_records_a_failure_without_a_warning(compose, tmp_path, caplog):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import open_dict, read_write

    from charlm.sweeps import JobReport

    cfg = compose("train", tmp_path / "run", ["seed=3"])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = "???"  # a single run has no job number (reading it raised MissingMandatoryValue)
    ret = JobReturn()
    ret.status, ret.return_value, ret.overrides = JobStatus.FAILED, RuntimeError("boom"), ["seed=3"]
    JobReport().on_job_end(config=cfg, job_return=ret)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    status = OmegaConf.load(tmp_path / "run" / "job_status.yaml")
    assert status.status == "FAILED" and status.error == "RuntimeError: boom" and list(status.overrides) == ["seed=3"]


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


def test_experiment_charrnn_matches_char_rnn(compose, tmp_path):
    cfg = compose("train", tmp_path, ["experiment=charrnn"])
    assert (cfg.model.cell, cfg.model.num_layers, cfg.model.hidden_size, cfg.model.dropout) == ("lstm", 2, 128, 0.0)
    assert cfg.optimizer._target_ == "torch.optim.RMSprop" and cfg.optimizer.lr == 2e-3 and cfg.optimizer.alpha == 0.95
    assert cfg.scheduler.decay_rate == 0.97 and cfg.scheduler.decay_after == 10
    assert (cfg.data.seq_len, cfg.data.batch_size) == (50, 50)
    assert (cfg.trainer.gradient_clip_algorithm, cfg.trainer.gradient_clip_val) == ("value", 5.0)


@pytest.mark.parametrize("corpus", ["tinyshakespeare", "names", "warpeace"])
def test_experiment_per_corpus(compose, tmp_path, corpus, shared_data):
    cfg = compose("train", tmp_path, [f"experiment={corpus}"])
    assert cfg.data.name == corpus
    assert (shared_data / corpus / cfg.data.filename).is_file()
    assert cfg.model.hidden_size >= 128 and cfg.trainer.max_steps > 1000
    instantiate(cfg.data)  # the data module builds from it


def test_debug_overlays_compose(compose, tmp_path):
    cfg = compose("train", tmp_path, ["debug=overfit"])
    assert cfg.trainer.overfit_batches > 0 and cfg.model.dropout == 0.0
    assert cfg.scheduler._target_.endswith("constant")
    cfg = compose("train", tmp_path, ["debug=profiler"])
    prof = instantiate(cfg.trainer.profiler)
    assert type(prof).__name__ == "SimpleProfiler"
    cfg = compose("train", tmp_path, ["debug=fdr"])
    assert cfg.trainer.fast_dev_run is True
