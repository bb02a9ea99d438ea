"""Corpus preparation at scale: a synthetic UTF-8 corpus built from the shared corpora with
multi-byte characters mixed in; preparation MB/s and peak RSS, then the time to start again
from the cache. Each measurement runs in a fresh subprocess, so its peak RSS is its own
(``VmHWM``; preparation imports only numpy, the start measurement also torch for the loader).

Worker: ``python -m benchmarks.corpus_bench {prep|start} FILE CACHE_DIR`` prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Not ``benchmarks.common``: it imports torch, which the preparing worker must not pay for.
REPO = Path(__file__).resolve().parents[1]

#: Lines of multi-byte text mixed into the synthetic corpus (2, 3 and 4 UTF-8 bytes per char).
MULTIBYTE = "Café déjà vu — “naïve” façade, Straße, Ελληνικά, русский, 日本語の文章, 한국어, emoji 😀🎭📜, € £ ¥\n"


def make_corpus(path: Path, size_bytes: int) -> Path:
    """Write (once) a UTF-8 file of about ``size_bytes``: the shared corpora concatenated, a
    multi-byte line after every 200 lines, repeated. Reused when it already has that size."""
    if path.is_file() and abs(path.stat().st_size - size_bytes) < (8 << 20) and path.stat().st_size >= size_bytes:
        return path
    from benchmarks.common import data_dir

    parts = []
    for rel in ("tinyshakespeare/input.txt", "warpeace/input.txt", "names/names.txt"):
        f = data_dir() / rel
        if f.is_file():
            parts.append(f.read_text(encoding="utf-8"))
    lines = "".join(parts).splitlines(keepends=True)
    block = "".join(line + (MULTIBYTE if i % 200 == 199 else "") for i, line in enumerate(lines)).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        written = 0
        while written < size_bytes:
            f.write(block)
            written += len(block)
    os.replace(tmp, path)
    return path


def _status(field: str) -> int:
    """A ``/proc/self/status`` size field in bytes (``VmRSS`` now, ``VmHWM`` peak of this
    process image; unlike ``ru_maxrss``, VmHWM does not carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
    return _status("VmRSS")


def _worker(mode: str, file: str, cache: str) -> dict:
    from charlm.data.cache import prepare_corpus

    base = _rss_now()
    t = time.perf_counter()
    c = prepare_corpus(file, cache_dir=cache)
    secs = time.perf_counter() - t
    out = {"seconds": secs, "num_chars": c.num_chars, "vocab_size": len(c.vocab), "dtype": str(c.ids.dtype)}
    if mode == "start":
        import numpy as np

        from charlm.data.streams import BPTTLoader  # imports torch: only for the start measurement

        out["ids_is_memmap"] = isinstance(c.ids, np.memmap)
        t = time.perf_counter()
        loader = BPTTLoader(c.ids, 64, 128)
        for i in range(0, len(loader), max(len(loader) // 20, 1)):  # 20 batches spread over the file
            loader.batch(i)
        out["batch_seconds"] = (time.perf_counter() - t) / 20
    out["peak_rss"] = _status("VmHWM")
    out["import_rss"] = base
    return out


def _run(mode: str, file: Path, cache: Path) -> dict:
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.corpus_bench", mode, str(file), str(cache)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])},
    )
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"corpus worker failed: {p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def bench_corpus(size_bytes: int, work: Path) -> dict:
    """Section 3. ``work`` holds the synthetic file (kept for reuse) and a fresh cache."""
    import shutil

    file = make_corpus(work / f"synthetic-{size_bytes >> 20}MB.txt", size_bytes)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    mb = file.stat().st_size / 1e6
    prep = _run("prep", file, cache)
    start = _run("start", file, cache)
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "file_MB": mb,
        "num_chars": prep["num_chars"],
        "vocab_size": prep["vocab_size"],
        "ids_dtype": prep["dtype"],
        "prep_seconds": prep["seconds"],
        "prep_MB_per_s": mb / prep["seconds"],
        "prep_peak_rss_MB": prep["peak_rss"] / 1e6,
        "rss_after_imports_MB": prep["import_rss"] / 1e6,
        "prep_peak_rss_above_imports_MB": (prep["peak_rss"] - prep["import_rss"]) / 1e6,
        "cached_start_seconds": start["seconds"],
        "cached_start_process_wall_s": start["process_wall_s"],
        "cached_start_peak_rss_MB": start["peak_rss"] / 1e6,
        "ids_is_memmap": start["ids_is_memmap"],
        "batch_64x128_from_memmap_ms": start["batch_seconds"] * 1e3,
    }


if __name__ == "__main__":
    print(json.dumps(_worker(*sys.argv[1:4])))
