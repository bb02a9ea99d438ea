"""charlm.shell: how the apps print paths and commands, so that a printed command pastes back into a shell."""

from __future__ import annotations

import os
import shlex

from charlm.cli.overrides import hydra_quote, quote_overrides
from charlm.shell import command, shown_path


def test_shown_path_is_relative_under_the_current_directory_else_absolute(tmp_path, monkeypatch):
    run = tmp_path / "outputs" / "train" / "runs" / "2026-01-01_00-00-00_000000"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert shown_path(run) == os.path.join("outputs", "train", "runs", run.name)
    assert shown_path(str(run / "checkpoints" / "last.ckpt")) == f"outputs/train/runs/{run.name}/checkpoints/last.ckpt"
    assert shown_path("outputs/x") == "outputs/x" and shown_path(tmp_path) == "."
    monkeypatch.chdir(run)
    assert shown_path(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")  # not under it: absolute


def test_printed_commands_quote_paths_for_the_shell():
    job = "outputs/train/multiruns/2026-01-01_00-00-00_000000/0_data.batch_size=4,model.hidden_size=64"
    assert command("charlm-sample", ckpt=f"{job}/checkpoints/last.ckpt") == f"charlm-sample ckpt={job}/checkpoints/last.ckpt"
    for path in ["/tmp/my runs/it's/last.ckpt", "/tmp/$HOME/`x`/a\"b", "/tmp/~x/!bang"]:
        line = command("charlm-sample", ckpt=path)
        assert shlex.split(line) == ["charlm-sample", f"ckpt={path}"]
        assert quote_overrides(shlex.split(line)[1:]) == [f"ckpt={hydra_quote(path, interpolate=True)}"]
