"""charlm.visualize.callback: the pages written at the end of a training run, from the start of its
val split, and sent to W&B."""

from __future__ import annotations

from pathlib import Path

import pytest

from charlm.checkpoint import load_checkpoint
from charlm.data.streams import split_bounds
from conftest import page_data


@pytest.mark.slow
def test_callback_writes_pages(visualized_run):
    vis = visualized_run / "visualize"
    html = (vis / "cells.html").read_text(encoding="utf-8")
    png = (vis / "cells_gates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (vis / "samples.html").is_file()
    data = page_data(html)
    assert len(data["text"]) == 400 and data["num_layers"] == 2 and set(data["states"]) == {"c", "h"}
    source = load_checkpoint(visualized_run / "checkpoints" / "last.ckpt")["charlm"]["data"]["source"]
    full = Path(source).read_text(encoding="utf-8")
    begin = split_bounds(len(full), (0.8, 0.2, 0.0))[1][0]
    assert data["text"] == full[begin : begin + 400]  # held-out text: the start of the val split
    # W&B (offline) received both pages as HTML media and the plot as an image
    logged = [p.read_text(encoding="utf-8") for p in visualized_run.glob("wandb/offline-run-*/files/media/html/**/*.html")]
    assert any(page_data(h)["text"] == data["text"] for h in logged if "charlm-data" in h)
    assert any('class="sample"' in h for h in logged)
    assert list(visualized_run.glob("wandb/offline-run-*/files/media/images/**/*.png"))
