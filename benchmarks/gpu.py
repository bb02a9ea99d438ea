"""GPU benchmark (section 7): one prepared command for one GPU, in under 8 minutes.

    PYTHONUNBUFFERED=1 python -m benchmarks.gpu --json $OUT/gpu.json --data-dir <folder holding warpeace/input.txt>
    python -m benchmarks.gpu --tiny --json /tmp/gpu-tiny.json      # the same code path, tiny, on the CPU (tests)

In order, writing the JSON after each part (a part that fails records its error and the rest go on):

1. ``throughput``: charlm's Lightning step (built as ``charlm-train`` builds it) against a plain
   cuDNN ``nn.LSTM`` loop on the same GPU and batches, at the War and Peace GPU recipe's size
   (3x512 LSTM, 128x128 windows), in fp32 (``32-true``, TF32 off in matmuls and cuDNN) and
   ``bf16-mixed``; alternated ABBA (:func:`benchmarks.train_bench.bench_training`).
2. ``resume``: stop + resume is exact on the GPU: ``experiment=warpeace_gpu`` (bf16-mixed,
   dropout: CUDA RNG and a bf16 hidden state in the checkpoint) run straight for ``2n`` steps,
   and again stopped at ``n`` (``stop_after_steps``) and resumed (``resume=<run dir>``): every
   parameter and every logged training loss compared bit for bit (a second straight run tells
   whether any difference is the GPU's own non-determinism).
3. ``train``: ``experiment=warpeace_gpu`` trained for the time left (``max_steps`` sized from the
   measured bf16 throughput so the cosine schedule completes; ``trainer.max_time`` as a guard,
   capped at the recipe's own ``max_steps``), then ``charlm-eval`` of its best checkpoint on the
   val and test splits, with ``crlf=true`` (the paper's count: 1.077 nats/char for its best LSTM).

Runs offline: W&B is not used (``logger=csv``), the corpus comes from ``--data-dir`` (or
``$CHARLM_DATA_DIR``), everything else is written under ``--work`` (default a temporary folder).
Needs torch, lightning, torchmetrics, hydra-core, omegaconf, numpy, rich, matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The War and Peace GPU recipe's size (conf/experiment/warpeace_gpu.yaml).
FULL = {
    "size": {"hidden_size": 512, "num_layers": 3, "batch_size": 128, "seq_len": 128},
    "bench": {"steps": 20, "warmup": 5, "rounds": 2, "sgemm_n": 8192},
    "resume_steps": 20,
    "budget_s": 450.0,
    "model": [],
    "device": [],
}
#: A few seconds on the CPU: the same code path, meaningless numbers.
TINY = {
    "size": {"hidden_size": 32, "num_layers": 2, "batch_size": 4, "seq_len": 16},
    "bench": {"steps": 3, "warmup": 1, "rounds": 1, "sgemm_n": 128},
    "resume_steps": 3,
    "budget_s": 90.0,
    "model": ["model.hidden_size=32", "data.batch_size=4", "data.seq_len=16", "data.eval_batch_size=64"],
    "device": ["trainer.accelerator=cpu", "trainer.precision=32-true"],
}
QUIET = ["callbacks.samples.length=0", "~callbacks.visualize", "~callbacks.rich_progress_bar",
         "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]


def say(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def child_env(data_dir: Path, cache: Path) -> dict[str, str]:
    """The environment of every charlm process: this checkout's code, offline, unbuffered."""
    path = [str(REPO / "src"), str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), CHARLM_DATA_DIR=str(data_dir), CHARLM_CACHE_DIR=str(cache),
                WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true", PYTHONUNBUFFERED="1")


def run_cli(app: str, args: list[str], env: dict, log: Path, timeout: float) -> float:
    """Run ``python -m charlm.cli.<app> args``, its output streamed (prefixed) and kept in ``log``;
    returns the wall time. Raises RuntimeError on a non-zero exit (with the log's tail)."""
    cmd = [sys.executable, "-m", f"charlm.cli.{app}", *args]
    say("$ " + shlex.join(["python", "-m", f"charlm.cli.{app}", *args]))
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    lines: list[str] = []
    with open(log, "w", encoding="utf-8") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                             encoding="utf-8", errors="replace")
        try:
            assert p.stdout is not None
            for line in p.stdout:
                f.write(line)
                lines.append(line)
                print(f"    {line}", end="", flush=True)
                if time.perf_counter() - t > timeout:
                    p.kill()
                    raise RuntimeError(f"{app} ran past {timeout:.0f} s and was stopped")
            p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t)))
        finally:
            if p.poll() is None:
                p.kill()
    if p.returncode != 0:
        raise RuntimeError(f"{app} exited {p.returncode}: {''.join(lines[-15:])}")
    return time.perf_counter() - t


def csv_losses(run_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` from a run's CSV log."""
    import csv

    out: dict[int, float] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def csv_val_curve(run_dir: Path) -> list[tuple[int, float]]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["val/loss"])) for r in csv.DictReader(f) if r.get("val/loss")]


def compare_params(a: Path, b: Path) -> dict:
    """Bitwise comparison of two runs' ``last.ckpt`` parameters."""
    import torch

    pa = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    pb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    diff = max(((pa[k].float() - pb[k].float()).abs().max().item() for k in pa), default=0.0)
    return {"identical": pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa), "max_abs_diff": diff}


def best_checkpoint(run_dir: Path) -> Path:
    """The best-k checkpoint with the lowest val loss in its name, else ``last.ckpt``."""
    best = sorted(run_dir.glob("checkpoints/step*-val_loss*.ckpt"), key=lambda p: float(p.stem.rsplit("val_loss", 1)[1]))
    return best[0] if best else run_dir / "checkpoints" / "last.ckpt"


# ---------------------------------------------------------------------------------- parts
def part_throughput(p: dict, device: str, work: Path) -> dict:
    import torch

    from benchmarks.train_bench import bench_training

    out: dict = {"size": p["size"], "device": device}
    for name, precision in (("fp32", "32-true"), ("bf16", "bf16-mixed")):
        fp32 = precision == "32-true"
        if device == "cuda":  # fp32 means fp32: no TF32 in matmuls or cuDNN, for both loops
            torch.backends.cuda.matmul.allow_tf32 = not fp32 and torch.backends.cuda.matmul.allow_tf32
            torch.backends.cudnn.allow_tf32 = not fp32
        trainer = ["trainer=gpu" if device == "cuda" else "trainer=cpu", f"trainer.precision={precision}", "data=warpeace"]
        say(f"throughput {name}: charlm vs plain nn.LSTM loop, {p['size']}")
        try:
            r = bench_training(p["size"], p["bench"]["steps"], p["bench"]["warmup"], p["bench"]["rounds"], work / name,
                               p["bench"]["sgemm_n"], trainer_overrides=trainer, device=device, precision=precision)
            r["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        except Exception as e:
            r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
        out[name] = r
        say(f"throughput {name}: " + json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))}))
    torch.backends.cudnn.allow_tf32 = True
    return out


def part_resume(p: dict, env: dict, work: Path) -> dict:
    n = p["resume_steps"]
    common = ["experiment=warpeace_gpu", f"trainer.max_steps={2 * n}", f"trainer.val_check_interval={n}",
              "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1",
              f"callbacks.last_checkpoint.every_n_train_steps={n}", "seed=7"] + QUIET + p["model"] + p["device"]
    straight, cut = work / "straight", work / "cut"
    run_cli("train", common + [f"hydra.run.dir={straight}"], env, work / "straight.log", 300)
    run_cli("train", common + [f"stop_after_steps={n}", f"hydra.run.dir={cut}"], env, work / "cut.log", 300)
    import torch

    ck = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ck["charlm"].get("train_state")
    stopped_at = int(ck["global_step"])
    run_cli("train", [f"resume={cut}"], env, work / "resume.log", 300)
    params = compare_params(straight, cut)
    la, lb = csv_losses(straight), csv_losses(cut)
    out = {
        "steps": 2 * n, "stopped_at": stopped_at,
        "hidden_state_dtype_in_checkpoint": str(state[0].dtype) if state else None,
        "params_identical": params["identical"], "params_max_abs_diff": params["max_abs_diff"],
        "losses_identical": la == lb and len(la) == 2 * n,
        "losses_max_abs_diff": max((abs(la[k] - lb.get(k, math.inf)) for k in la), default=math.inf),
    }
    out["exact"] = out["params_identical"] and out["losses_identical"]
    if not out["exact"]:  # is it the GPU's own non-determinism? a second straight run tells
        again = work / "straight2"
        run_cli("train", common + [f"hydra.run.dir={again}"], env, work / "straight2.log", 300)
        out["straight_runs_identical"] = compare_params(straight, again)["identical"] and csv_losses(again) == la
    return out


def part_train(p: dict, env: dict, work: Path, seconds: float, tps: float | None) -> dict:
    size = p["size"]
    tokens = size["batch_size"] * size["seq_len"]
    recipe_steps = 5000  # conf/experiment/warpeace_gpu.yaml
    if tps and math.isfinite(tps):
        # the schedule must complete in the budget: start-up and validations take ~15% + 20 s
        steps = int(max(seconds - 20.0, 10.0) * 0.85 * tps / tokens)
    else:
        steps = 300
    steps = max(10, min(steps, recipe_steps))
    val_every = min(250, steps)
    run = work / "run"
    secs = int(seconds)
    overrides = ["experiment=warpeace_gpu", f"trainer.max_steps={steps}", f"trainer.val_check_interval={val_every}",
                 f"trainer.max_time=00:00:{secs // 60:02d}:{secs % 60:02d}", "callbacks.samples.length=300",
                 "~callbacks.visualize", "~callbacks.rich_progress_bar", "+trainer.enable_progress_bar=false",
                 "logger=csv"] + p["model"] + p["device"]
    out: dict = {"max_steps": steps, "budget_s": seconds, "command": "charlm-train " + shlex.join(overrides)}
    out["wall_s"] = run_cli("train", overrides + [f"hydra.run.dir={run}"], env, work / "train.log", seconds + 180)
    import torch

    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    out["steps"] = int(ck["global_step"])
    out["val_curve"] = csv_val_curve(run)
    best = best_checkpoint(run)
    out["checkpoint"] = str(best)
    dev = ["device=cpu"] if p["device"] else ["device=cuda"]
    for split in ("val", "test"):
        edir = work / f"eval_{split}"
        args = [f"ckpt={best}", f"split={split}", "crlf=true", f"hydra.run.dir={edir}"] + dev
        run_cli("eval", args, env, work / f"eval_{split}.log", 240)
        out[split] = json.loads((edir / "metrics.json").read_text())
        out[f"{split}_command"] = "charlm-eval " + shlex.join(args[:3])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here (after each part)")
    ap.add_argument("--data-dir", type=Path, help="folder holding warpeace/input.txt (default $CHARLM_DATA_DIR)")
    ap.add_argument("--work", type=Path, help="scratch folder for runs and caches (default a new temporary folder)")
    ap.add_argument("--budget", type=float, help="seconds for the whole command (default 450; tiny 90)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: checks the command runs, no meaningful numbers")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,resume,train")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    missing = []
    for mod in ("torch", "lightning", "torchmetrics", "hydra", "omegaconf", "numpy", "rich"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise SystemExit(f"missing Python packages: {', '.join(missing)} (hydra = hydra-core; omegaconf needs "
                         "antlr4-python3-runtime==4.9.3): install them or carry their wheels")
    import torch

    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    p = dict(TINY if args.tiny else FULL)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu" and not args.tiny:
        raise SystemExit("no CUDA GPU visible: run this on a GPU machine (or --tiny to check the command on the CPU)")
    data_dir = (args.data_dir or Path(os.environ.get("CHARLM_DATA_DIR") or REPO.parent / "shared" / "data")).resolve()
    if not (data_dir / "warpeace" / "input.txt").is_file():
        raise SystemExit(f"War and Peace not found at {data_dir / 'warpeace' / 'input.txt'}: give --data-dir <folder>")
    work = (args.work or Path(tempfile.mkdtemp(prefix="charlm-gpu-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(data_dir, work / "cache")
    os.environ.update({k: env[k] for k in ("CHARLM_DATA_DIR", "CHARLM_CACHE_DIR", "WANDB_MODE", "WANDB_SILENT")})
    budget = args.budget or p["budget_s"]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from benchmarks.common import machine

    res: dict = {
        "command": "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "tiny" if args.tiny else "full", "device": device, "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": budget, "work": str(work), "data_dir": str(data_dir),
    }
    if device == "cuda":
        res["machine"].update({"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                               "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)})

    def save() -> None:
        res["elapsed_s"] = time.perf_counter() - t0
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=1, default=str))

    def part(name: str, fn) -> None:
        if name in skip:
            return
        say(f"== {name} ({time.perf_counter() - t0:.0f} s in)")
        t = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # record it and go on with the other parts
            res[name] = {"error": f"{type(e).__name__}: {e}"[:4000]}
        res[name]["part_wall_s"] = time.perf_counter() - t
        say(f"== {name} done in {res[name]['part_wall_s']:.0f} s: "
            + json.dumps({k: v for k, v in res[name].items() if not isinstance(v, (list, dict))}, default=str)[:2000])
        save()

    save()
    part("throughput", lambda: part_throughput(p, device, work / "throughput"))
    part("resume", lambda: part_resume(p, env, work / "resume"))
    bf16 = (res.get("throughput") or {}).get("bf16") or {}
    tps = bf16.get("charlm_tokens_per_sec")
    tps = sorted(tps)[len(tps) // 2] if isinstance(tps, list) and tps else None
    reserve = 45.0 if not args.tiny else 30.0  # two charlm-eval runs after training
    left = budget - (time.perf_counter() - t0) - reserve
    part("train", lambda: part_train(p, env, work / "train", max(left, 30.0), tps))
    save()
    say(f"done in {time.perf_counter() - t0:.0f} s" + (f"; results in {args.json}" if args.json else ""))
    return res


if __name__ == "__main__":
    main()
