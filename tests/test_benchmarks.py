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


def test_bench_sections_are_validated():
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit):
        main(["--quick", "--only", "nonsense"])
