"""Shared pieces: machine description, timers, and the hardware references (sgemm, copy bandwidth)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The shared corpora (``$CHARLM_DATA_DIR``, else ``../shared/data`` next to the repo)."""
    return Path(os.environ.get("CHARLM_DATA_DIR") or REPO.parent / "shared" / "data")


def machine() -> dict:
    """CPU model, cores, torch threads and versions, load average (a noisy-machine marker)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Median seconds of one call of ``fn`` over ``repeat`` calls (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sgemm_flops(n: int = 2048, repeat: int = 5, device: str = "cpu") -> float:
    """Achieved FLOP/s of an ``[n, n] @ [n, n]`` float32 matmul (``2 n^3`` FLOPs, median)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    t = timeit(lambda: torch.mm(a, b, out=c), repeat, warmup=2, sync=sync)
    return 2 * n**3 / t


def copy_bandwidth(nbytes: int = 256 << 20, repeat: int = 5) -> float:
    """Memory bandwidth in bytes/s from a large float32 tensor copy: ``2 * nbytes`` (read +
    write) over the median copy time."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), repeat, warmup=2)
    return 2 * nbytes / t


def median(xs):
    return statistics.median(xs) if xs else float("nan")
