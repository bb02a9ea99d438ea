"""Compare the jobs of a sweep (or one run) without W&B: what ``charlm-report`` prints and writes
(the app, its options and output: :mod:`charlm.cli.report`).

Reads only what every run writes to disk: ``job_status.yaml`` (how the run ended and its own
overrides, written by :func:`charlm.sweeps.write_job_status`), ``.hydra/overrides.yaml`` (the
overrides, for a run without that record), ``csv/metrics.csv`` (Lightning's CSVLogger: ``step``
and every logged metric) and ``csv/hparams.yaml`` (``num_parameters``). Writes ``report.md``, ``report.csv`` and ``val_bpc.png`` (val bits per character
against the optimizer step, one curve per job) into the given folder (or ``--out``).

    charlm-report outputs/train/multiruns/2026-01-01_12-00-00_000000
    charlm-report outputs/train/runs/<run>
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from charlm.errors import CharLMError
from charlm.job_status import JOB_STATUS_FILE

#: Columns of report.csv, in order.
CSV_COLUMNS = ["rank", "job", "status", "overrides", "best_val_bpc", "final_val_bpc", "steps", "wall_time_s", "num_parameters", "run_dir"]


@dataclass
class Job:
    """One run directory's results.

    ``curve`` is ``[(step, val_bpc), ...]`` in file order (bits per character);
    ``wall_time_s`` is seconds from the job's start (``.hydra/config.yaml`` written) to its last
    metrics write (``csv/metrics.csv``'s modification time); ``status`` is ``job_status.yaml``'s
    (``COMPLETED``, ``STOPPED``, ``INTERRUPTED``, ``FAILED``), ``UNKNOWN`` without one (a run
    killed outright, or still running); ``note`` says why a run did not complete (the error, or
    the reason and step it stopped at)."""

    run_dir: Path
    name: str
    overrides: list[str] = field(default_factory=list)
    status: str = "UNKNOWN"
    error: str | None = None
    note: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int | None = None
    wall_time_s: float | None = None
    num_parameters: int | None = None

    @property
    def best_val_bpc(self) -> float | None:
        finite = [v for _, v in self.curve if math.isfinite(v)]
        return min(finite) if finite else None

    @property
    def final_val_bpc(self) -> float | None:
        return self.curve[-1][1] if self.curve else None


def find_run_dirs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (``root`` itself for a single run): folders holding
    ``.hydra/config.yaml``, skipping W&B's and checkpoints' folders; sorted by job number when
    the names start with one (``<num>_<overrides>``), else by name."""
    if (root / ".hydra" / "config.yaml").is_file():
        return [root]
    dirs = [p.parent.parent for p in root.rglob(".hydra/config.yaml") if "wandb" not in p.parts]

    def key(p: Path):
        head = p.name.split("_", 1)[0]
        return (0, int(head), str(p)) if head.isdigit() else (1, 0, str(p))

    return sorted(dirs, key=key)


def _float(s: str | None) -> float | None:
    if s is None or s == "":
        return None
    try:
        return float(s)
    except ValueError:
        return None


def read_job(run_dir: Path, root: Path) -> Job:
    """Read one run folder (see the module docstring for the files used). Missing files leave
    the matching fields ``None``/empty: a job that failed before logging still gets a row."""
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    job = Job(run_dir=run_dir, name=name)
    ov = run_dir / ".hydra" / "overrides.yaml"
    if ov.is_file():
        job.overrides = [str(o) for o in (OmegaConf.load(ov) or [])]
    metrics = run_dir / "csv" / "metrics.csv"
    if metrics.is_file():
        steps: list[int] = []
        with open(metrics, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                step = _float(row.get("step"))
                if step is None:
                    continue
                steps.append(int(step))
                bpc = _float(row.get("val/bpc"))
                if bpc is not None:
                    job.curve.append((int(step), bpc))
        # Lightning logs 0-based step indices; the number of optimizer steps taken is one more.
        job.steps = max(steps) + 1 if steps else None
        start = run_dir / ".hydra" / "config.yaml"
        if start.is_file():
            job.wall_time_s = max(0.0, metrics.stat().st_mtime - start.stat().st_mtime)
    hp = run_dir / "csv" / "hparams.yaml"
    if hp.is_file():
        n = OmegaConf.load(hp).get("num_parameters")
        job.num_parameters = int(n) if n is not None else None
    st = run_dir / JOB_STATUS_FILE
    if st.is_file():
        s = OmegaConf.load(st)
        job.status = str(s.get("status", "UNKNOWN"))
        job.error = s.get("error")
        if s.get("overrides") is not None:  # the run's own (.hydra/overrides.yaml is a resume's command line)
            job.overrides = [str(o) for o in s.overrides]
        if s.get("step") is not None:
            job.steps = int(s.step)
        if job.status == "STOPPED":
            at = f", at step {job.steps}" if job.steps is not None else ""
            job.note = f"{s.get('reason') or 'stopped before trainer.max_steps'}{at}"
        elif job.error:
            job.note = str(job.error)
    else:
        job.note = f"no {JOB_STATUS_FILE}: the run was killed outright, or is still running"
    return job


def varying_overrides(jobs: list[Job]) -> list[list[str]]:
    """Each job's overrides, keeping only the keys whose value differs between jobs (the ones
    the sweep varied); with a single job, all its overrides."""
    if len(jobs) < 2:
        return [list(j.overrides) for j in jobs]
    parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in j.overrides) for j in jobs]
    keys = sorted({k for p in parsed for k in p})
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    return [[f"{k}={p[k]}" for k in varying if k in p] for p in parsed]


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def build_report(root: str | Path, out: str | Path | None = None, plot: bool = True) -> list[Job]:
    """Read every job under ``root``, rank them by best ``val/bpc`` (lowest first; jobs without
    one last) and write ``report.md``, ``report.csv`` and (``plot``) ``val_bpc.png`` into ``out``
    (default ``root``). Returns the ranked jobs.

    Raises:
        CharLMError: if ``root`` is not a folder or holds no run folder (``.hydra/config.yaml``).
    """
    root = Path(root)
    if not root.is_dir():
        raise CharLMError(f"{root} is not a folder: give a run dir (outputs/train/runs/...) or a multirun dir (outputs/train/multiruns/...)")
    dirs = find_run_dirs(root)
    if not dirs:
        raise CharLMError(f"no runs under {root}: a run folder holds .hydra/config.yaml (written by charlm-train)")
    jobs = [read_job(d, root) for d in dirs]
    jobs.sort(key=lambda j: (j.best_val_bpc is None, j.best_val_bpc if j.best_val_bpc is not None else 0.0))
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    shown = varying_overrides(jobs)

    rows = []
    for rank, (j, ov) in enumerate(zip(jobs, shown), 1):
        rows.append({
            "rank": rank,
            "job": j.name,
            "status": j.status,
            "overrides": " ".join(ov),
            "best_val_bpc": j.best_val_bpc,
            "final_val_bpc": j.final_val_bpc,
            "steps": j.steps,
            "wall_time_s": round(j.wall_time_s, 1) if j.wall_time_s is not None else None,
            "num_parameters": j.num_parameters,
            "run_dir": str(j.run_dir),
        })
    with open(out / "report.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})

    lines = [
        f"# charlm report: {root}",
        "",
        f"{len(jobs)} job(s), ranked by best val/bpc (bits per character, lower is better).",
        "",
        "| rank | overrides | best val bpc | final val bpc | steps | wall time (s) | parameters | status |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rank']} | {r['overrides'] or '(none)'} | {_fmt(r['best_val_bpc'], '.4f')} | {_fmt(r['final_val_bpc'], '.4f')} "
            f"| {_fmt(r['steps'])} | {_fmt(r['wall_time_s'], '.1f')} | {_fmt(r['num_parameters'], ',')} | {r['status']} |"
        )
    short = [j for j in jobs if j.status != "COMPLETED" and j.note]
    if short:
        lines += ["", "Jobs that did not complete:", ""] + [f"- `{j.name}` {j.status}: {j.note}" for j in short]
    if plot:
        lines += ["", "![val bpc curves](val_bpc.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if plot:
        plot_curves(jobs, shown, out / "val_bpc.png")
    return jobs


def plot_curves(jobs: list[Job], labels: list[list[str]], path: Path) -> None:
    """Plot val bpc against the optimizer step, one line per job (labelled by its overrides)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for j, lab in zip(jobs, labels):
        if not j.curve:
            continue
        xs, ys = zip(*j.curve)
        ax.plot(xs, ys, marker="o", markersize=3, label=" ".join(lab) or j.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("val bits per character")
    ax.set_title("validation bpc")
    ax.grid(True, alpha=0.3)
    if any(j.curve for j in jobs):
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
