"""Checkpoint files on disk: written atomically, with the permissions the user's umask gives."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from charlm.checkpoint import AtomicCheckpointIO, atomic_torch_save
from charlm.cli.train import train
from charlm.data.cache import prepare_corpus
from conftest import FAST_TRAIN


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one is restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027], ids=oct)
def test_checkpoint_and_cache_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, shakespeare_path):
    umask(mask)
    atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "a.ckpt")
    AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(2)}, tmp_path / "b.ckpt")
    assert mode(tmp_path / "a.ckpt") == mode(tmp_path / "b.ckpt") == 0o666 & ~mask
    # replacing an existing checkpoint gives the same mode (a new file is renamed over it)
    atomic_torch_save({"x": torch.ones(2)}, tmp_path / "a.ckpt")
    assert mode(tmp_path / "a.ckpt") == 0o666 & ~mask
    # the corpus cache: the entry folder and its files, as mkdir/open give them
    c = prepare_corpus(shakespeare_path, cache_dir=tmp_path / "cache")
    assert mode(c.cache_dir) == 0o777 & ~mask
    assert {mode(p) for p in c.cache_dir.iterdir()} == {0o666 & ~mask}


def test_a_training_writes_checkpoints_others_may_read_under_umask_022(compose, tmp_path, umask, small_corpus):
    umask(0o022)
    out = tmp_path / "run"
    train(compose("train", out, FAST_TRAIN + ["data=file", f"data.path={small_corpus}", "trainer.max_steps=20",
                                              "trainer.limit_val_batches=2", "callbacks.samples.length=0",
                                              "~callbacks.visualize"]))
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 2  # last.ckpt and the best one at step 20
    assert {mode(p) for p in ckpts} == {0o644}, {p.name: oct(mode(p)) for p in ckpts}
