"""``python -m benchmarks [--quick] [--only train,eval,corpus,sampling,quality] [--json FILE]``.

Full mode (~10 min on 2 CPU cores) is what ``BENCHMARKS.md`` records; ``--quick`` runs every
section with tiny sizes in well under a minute (CI: tests/test_benchmarks.py) and asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SECTIONS = ("train", "eval", "corpus", "sampling", "quality")

FULL = {
    "size": {"hidden_size": 512, "num_layers": 2, "batch_size": 64, "seq_len": 128},
    "steps": 2, "warmup": 1, "rounds": 3, "sgemm_n": 2048,
    "corpus_bytes": 1 << 30,
    "sampling": {"hidden_size": 512, "num_layers": 2, "chars": 400, "rounds": 3, "bw_bytes": 256 << 20},
    "eval_chars": None,
    "quality_s": 120,
    "quality_extra": [],
}
QUICK = {
    "size": {"hidden_size": 32, "num_layers": 1, "batch_size": 4, "seq_len": 16},
    "steps": 3, "warmup": 1, "rounds": 2, "sgemm_n": 128,
    "corpus_bytes": 4 << 20,
    "sampling": {"hidden_size": 32, "num_layers": 2, "chars": 20, "rounds": 1, "bw_bytes": 4 << 20},
    "eval_chars": 4000,
    "quality_s": 3,
    "quality_extra": ["model.hidden_size=32", "model.num_layers=1", "data.batch_size=4", "data.seq_len=16"],
}


def _fmt(x):
    if isinstance(x, float):
        return f"{x:.4g}"
    return x


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the code runs (CI), no meaningful speeds")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--work", type=Path, help="scratch folder (synthetic corpus, run dirs); default a temp dir")
    ap.add_argument("--size", help="training size HIDDEN,LAYERS,BATCH,SEQ (default 512,2,64,128; quick 32,1,4,16)")
    ap.add_argument("--rounds", type=int, help="alternations of charlm and the plain loop (default 3; quick 2)")
    ap.add_argument("--corpus-mb", type=int, help="size of the synthetic corpus (default 1024; quick 4)")
    ap.add_argument("--quality-seconds", type=float, help="wall-clock training budget of the quality section")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    p = dict(QUICK if args.quick else FULL)
    if args.size:
        h, n_l, b, t = (int(v) for v in args.size.split(","))
        p["size"] = {"hidden_size": h, "num_layers": n_l, "batch_size": b, "seq_len": t}
    if args.rounds:
        p["rounds"] = args.rounds

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    from benchmarks.common import data_dir, machine

    os.environ.setdefault("CHARLM_DATA_DIR", str(data_dir()))
    work = args.work or Path(tempfile.mkdtemp(prefix="charlm-bench-"))
    os.environ["CHARLM_CACHE_DIR"] = str(work / "charlm-cache")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from charlm.cli.train import quiet_third_party  # imports Lightning, which resets its loggers to INFO

    quiet_third_party()  # no litlogger/litmodels tips between the results
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    results: dict = {"command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "mode": "quick" if args.quick else "full", "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t_all = time.perf_counter()
    module = dm = None
    if "train" in only:
        from benchmarks.train_bench import bench_training

        print("== 1+2. training throughput vs plain loop, FLOP efficiency", flush=True)
        r = bench_training(p["size"], p["steps"], p["warmup"], p["rounds"], work / "train", p["sgemm_n"])
        results["train"] = r
        print(json.dumps({k: _fmt(v) for k, v in r.items() if not isinstance(v, list)}, indent=1), flush=True)
    if "eval" in only:
        from benchmarks.train_bench import bench_eval, charlm_round

        print("== 5. evaluation throughput over the whole val split", flush=True)
        res = charlm_round(p["size"], 1, 0, work / "eval", ["trainer=cpu"])
        r = bench_eval(res["module"], res["dm"], p["size"]["batch_size"], p["size"]["seq_len"], max_chars=p["eval_chars"])
        results["eval"] = r
        print(json.dumps({k: _fmt(v) for k, v in r.items()}, indent=1), flush=True)
    if "corpus" in only:
        from benchmarks.corpus_bench import bench_corpus

        print("== 3. corpus preparation at scale", flush=True)
        r = bench_corpus(args.corpus_mb << 20 if args.corpus_mb else p["corpus_bytes"], work / "corpus")
        results["corpus"] = r
        print(json.dumps({k: _fmt(v) for k, v in r.items()}, indent=1), flush=True)
    if "sampling" in only:
        from benchmarks.sampling_bench import bench_sampling

        print("== 4. sampling", flush=True)
        r = bench_sampling(**p["sampling"])
        results["sampling"] = r
        print(json.dumps({k: (_fmt(v) if not isinstance(v, dict) else {a: _fmt(b) for a, b in v.items()}) for k, v in r.items() if k != "raw"}, indent=1), flush=True)
    if "quality" in only:
        from benchmarks.train_bench import bench_quality

        print("== 6. quality per CPU minute", flush=True)
        r = bench_quality(args.quality_seconds or p["quality_s"], work / "quality", p["quality_extra"])
        results["quality"] = r
        print(json.dumps({k: _fmt(v) for k, v in r.items()}, indent=1), flush=True)
    results["total_seconds"] = time.perf_counter() - t_all
    results["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"done in {results['total_seconds']:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    main()
