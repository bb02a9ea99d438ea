"""charlm-visualize (charlm.cli.visualize): its options, the text it reads (a file in the checkpoint's
encoding, a literal text, a slice of a split), the pages it writes and the paths it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from charlm.checkpoint import load_checkpoint
from charlm.data.streams import split_bounds
from charlm.errors import CharLMError
from conftest import assert_checked_before_any_work, assert_user_error, compose_cfg, last_ckpt, page_data


@pytest.mark.parametrize("typed,message", [
    ("max_chars=2.5", "max_chars=2.5 must be an integer >= 1"),
    ("top_k=0", "top_k=0 must be an integer >= 1"),
    ("offset=-1", "offset=-1 must be an integer >= 0"),
    ("device=gpu7", "device=gpu7 is not a device"),
])
def test_every_option_is_checked_before_any_work(tmp_path, typed, message):
    assert_checked_before_any_work("visualize", tmp_path, typed, message)


def test_visualize_reads_a_text_file_with_the_checkpoint_encoding_or_a_clean_error(tmp_path, shakespeare_run, run_app):
    from charlm.cli.visualize import run as vis_run

    latin = tmp_path / "latin1.txt"
    latin.write_bytes("First Citizen:\r\nBefore we proceed \xe9".encode("latin-1"))
    cfg = compose_cfg("visualize", tmp_path / "v", [f"ckpt={last_ckpt(shakespeare_run)}", f"text={latin}"])
    with pytest.raises(CharLMError, match=r"not valid utf-8: byte 0xe9 at byte offset 34 .*Set encoding=<the file's encoding>"):
        vis_run(cfg)
    # encoding= reads it; the newline handling is the checkpoint's (\r\n -> \n), so 'é' is the only unknown
    cfg = compose_cfg("visualize", tmp_path / "v", [f"ckpt={last_ckpt(shakespeare_run)}", f"text={latin}", "encoding=latin-1"])
    with pytest.raises(CharLMError, match=r"1 character\(s\) are not in the model's vocabulary: 'é'"):
        vis_run(cfg)
    r = run_app("visualize", f"ckpt={last_ckpt(shakespeare_run)}", f"text={latin}", f"out={tmp_path / 'p'}", f"hydra.run.dir={tmp_path / 'h'}")
    assert_user_error(r, "byte offset 34", "encoding=latin-1")


@pytest.mark.slow
def test_cli_writes_pages_and_prints_paths(visualized_run, tmp_path, run_app):
    out = tmp_path / "pages"
    proc = run_app("visualize", f"ckpt={visualized_run}", "text='\"Hello (world)\", he said.'", f"samples={visualized_run}",
                   f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}", timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.split()
    assert printed == [str(out / "cells.html"), str(out / "samples.html")]
    data = page_data((out / "cells.html").read_text(encoding="utf-8"))
    assert data["text"] == '"Hello (world)", he said.'
    assert (out / "cells_gates.png").is_file()


@pytest.mark.slow
def test_cli_val_slice_and_errors(visualized_run, tmp_path, compose):
    from charlm.cli.visualize import run

    cfg = compose("visualize", tmp_path, [f"ckpt={visualized_run}/checkpoints/last.ckpt", "max_chars=150", "offset=10"])
    (path,) = run(cfg)
    data = page_data(path.read_text(encoding="utf-8"))
    source = load_checkpoint(visualized_run / "checkpoints" / "last.ckpt")["charlm"]["data"]["source"]
    full = Path(source).read_text(encoding="utf-8")
    begin = split_bounds(len(full), (0.8, 0.2, 0.0))[1][0]
    assert data["text"] == full[begin + 10 : begin + 160]
    with pytest.raises(CharLMError, match="nothing to visualize"):
        run(compose("visualize", tmp_path, []))
    with pytest.raises(CharLMError, match="not in the model's vocabulary"):
        run(compose("visualize", tmp_path, [f"ckpt={visualized_run}", "text='Zürich'"]))
    with pytest.raises(CharLMError, match="split"):
        run(compose("visualize", tmp_path, [f"ckpt={visualized_run}", "split=dev"]))
