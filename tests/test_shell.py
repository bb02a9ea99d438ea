"""charlm.shell: how the apps print paths."""

from __future__ import annotations

import os

from charlm.shell import shown_path


def test_shown_path_is_relative_under_the_current_directory_else_absolute(tmp_path, monkeypatch):
    run = tmp_path / "outputs" / "train" / "runs" / "2026-01-01_00-00-00_000000"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert shown_path(run) == os.path.join("outputs", "train", "runs", run.name)
    assert shown_path(str(run / "checkpoints" / "last.ckpt")) == f"outputs/train/runs/{run.name}/checkpoints/last.ckpt"
    assert shown_path("outputs/x") == "outputs/x" and shown_path(tmp_path) == "."
    monkeypatch.chdir(run)
    assert shown_path(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")  # not under it: absolute
