"""GPU benchmark (section 7): ``python -m benchmarks.gpu [--json FILE]``, sized for < 5 minutes.

Runs sections 1, 2 and 6 on one CUDA GPU: charlm (``trainer=gpu``; cuDNN LSTM) against the
plain loop on the same GPU, in fp32 (``32-true``), ``bf16-mixed``, and ``bf16-mixed`` with
``torch.compile`` on both sides; sgemm FLOP/s measured in the same run on the GPU; then the
quality-per-minute run with ``trainer=gpu`` for 60 s.

NOT RUN YET: this task had no GPU lent; the numbers in BENCHMARKS.md are CPU-only.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quality-seconds", type=float, default=60)
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: run this on a GPU machine")
    os.environ.setdefault("WANDB_MODE", "offline")
    from benchmarks.common import data_dir, machine

    os.environ.setdefault("CHARLM_DATA_DIR", str(data_dir()))
    work = Path(tempfile.mkdtemp(prefix="charlm-gpu-bench-"))
    os.environ["CHARLM_CACHE_DIR"] = str(work / "cache")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the comparison
    from benchmarks.train_bench import bench_quality, bench_training

    size = {"hidden_size": 512, "num_layers": 2, "batch_size": 64, "seq_len": 128}
    res: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "train": {}}
    for name, precision, compile in (("fp32", "32-true", False), ("bf16", "bf16-mixed", False), ("bf16+compile", "bf16-mixed", True)):
        overrides = ["trainer=gpu", f"trainer.precision={precision}"]
        try:
            r = bench_training(size, steps=20, warmup=5, rounds=3, out=work / name, sgemm_n=8192,
                               trainer_overrides=overrides, device="cuda", precision=precision, compile=compile)
        except Exception as e:  # torch.compile of nn.LSTM may fail on some versions: record it
            r = {"error": repr(e)}
        res["train"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))}), flush=True)
    res["quality"] = bench_quality(args.quality_seconds, work / "quality", ["trainer=gpu"])
    print("quality", json.dumps(res["quality"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
