"""Shared fixtures: the real corpora from ../shared/data and composed Hydra configs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from charlm.config import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHARLM_DATA_DIR") or REPO.parent / "shared" / "data").resolve()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ["CHARLM_DATA_DIR"] = str(SHARED_DATA)
# Corpora are prepared into a cache of this test session (never into the repo's data/), set
# before any fixture so module-scoped fixtures and subprocesses use it too.
os.environ["CHARLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="charlm-test-cache-")
atexit.register(shutil.rmtree, os.environ["CHARLM_CACHE_DIR"], True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only corpora folder (``$CHARLM_DATA_DIR`` or ``../shared/data``)."""
    if not (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file():
        pytest.fail(f"corpora not found at {SHARED_DATA}: set CHARLM_DATA_DIR to the shared data folder")
    return SHARED_DATA


@pytest.fixture
def shakespeare_path(shared_data) -> Path:
    return shared_data / "tinyshakespeare" / "input.txt"


@pytest.fixture
def small_corpus(tmp_path, shakespeare_path) -> Path:
    """The first 60,000 characters of Tiny Shakespeare, as a file of its own."""
    p = tmp_path / "small.txt"
    p.write_text(shakespeare_path.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return p


def compose_cfg(config_name: str, output_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose one of the real configs (``train``, ``sample``, ``eval``) as the app would,
    with the Hydra runtime set so ``${hydra:...}`` resolves, and the output dir pointed at
    ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides or []), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.hydra.job.name = config_name
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


#: Overrides that make a training run take seconds: a small model, few steps, CSV only.
FAST_TRAIN = [
    "model.hidden_size=64",
    "model.num_layers=1",
    "data.batch_size=8",
    "data.seq_len=32",
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "trainer.limit_val_batches=10",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=5",
    "callbacks.last_checkpoint.every_n_train_steps=20",
    "~callbacks.rich_progress_bar",
    "logger=csv",
]


@pytest.fixture
def compose():
    """``compose(config_name, output_dir, overrides)`` -> composed config (see :func:`compose_cfg`)."""
    yield compose_cfg
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _own_wandb_service(monkeypatch):
    """Each command a test runs starts its own wandb-core, as a user's command does. A W&B run
    started inside this pytest process sets ``WANDB_SERVICE``, which subprocesses would inherit and
    then share one core: a run SIGKILLed by a test would stay registered there, and resuming it
    would fail with 'run ID ... is in use'."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: tiny runs on a small shared machine are faster
    without threads."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
