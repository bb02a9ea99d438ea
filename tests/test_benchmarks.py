"""The benchmark suite runs end to end in its quick mode (so it cannot rot); no speed asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from charlm.model.rnn import CharRNN

# the benchmarks package lives at the repo root, next to src/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.mark.slow
def test_quick_benchmarks_run_and_report(tmp_path, shared_data):
    from benchmarks.__main__ import main

    out = tmp_path / "bench.json"
    res = main(["--quick", "--json", str(out), "--work", str(tmp_path / "work")])
    assert out.is_file()
    tr = res["train"]
    assert len(tr["ratio_per_round"]) == tr["rounds"] and all(r > 0 for r in tr["ratio_per_round"])
    assert tr["flops_per_token"] == CharRNN(65, 32, 1).flops_per_token()
    assert res["eval"]["same_loss"]
    c = res["corpus"]
    assert c["ids_is_memmap"] and c["vocab_size"] > 65  # the multi-byte characters made it in
    s = res["sampling"]
    assert s["weight_bytes_per_char_fast"] < s["weight_bytes_per_char_all"]
    assert all(v > 0 for v in s["chars_per_sec"].values())
    q = res["quality"]
    assert q["steps"] > 0 and 0 < q["val_loss"] < 10


def test_bench_sections_are_validated(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--quick", "--only", "train,nonsense"])
    assert e.value.code == 2 and "unknown section(s) ['nonsense']" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_command_runs_tiny_on_the_cpu(tmp_path, shared_data):
    """benchmarks.gpu --tiny: every part of the GPU command (throughput vs the plain loop, exact
    stop + resume, time-bounded War and Peace training, val/test evaluation with the CRLF count)
    runs on the CPU and writes its JSON; no speed asserted."""
    import json

    from benchmarks.gpu import main

    out = tmp_path / "gpu.json"
    res = main(["--tiny", "--json", str(out), "--work", str(tmp_path / "work"), "--data-dir", str(shared_data)])
    assert json.loads(out.read_text())["mode"] == "tiny" and res["device"] == "cpu"
    for name in ("fp32", "bf16"):
        t = res["throughput"][name]
        assert "error" not in t, t
        assert t["charlm_tokens_per_sec"][0] > 0 and t["plain_tokens_per_sec"][0] > 0
    r = res["resume"]
    assert "error" not in r, r
    assert r["stopped_at"] * 2 == r["steps"] and r["exact"] and r["params_identical"] and r["losses_identical"]
    tr = res["train"]
    assert "error" not in tr, tr
    assert tr["steps"] > 0 and tr["val_curve"] and tr["command"].startswith("charlm-train experiment=warpeace_gpu")
    for split in ("val", "test"):
        m = tr[split]
        assert 0 < m["crlf"]["loss"] < m["loss"] < 5 and m["crlf"]["chars"] > m["chars"] > 300_000


def test_gpu_command_refuses_without_a_gpu_or_corpus(tmp_path):
    import torch

    from benchmarks.gpu import main

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU visible"):
            main(["--json", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="War and Peace not found"):
        main(["--tiny", "--data-dir", str(tmp_path)])
