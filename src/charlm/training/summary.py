"""The end-of-training summary ``charlm-train`` prints: why the run ended, its final and best val
loss, a short sample, and where everything went (run dir, the checkpoints on disk, W&B files,
the commands that sample or resume it)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from charlm.checkpoint import checkpoint_step
from charlm.shell import command, shown_path
from charlm.training.callbacks import FinalValidation
from charlm.training.module import CharLM
from charlm.training.stopping import LastCheckpoint


def summarize(cfg: DictConfig, trainer: L.Trainer, module: CharLM, metrics: dict[str, float], wall: float,
              stopped: str | None = None) -> None:
    """Print the final metrics, a short sample and where everything went. ``stopped``: why the run
    stopped before its end (``"SIGINT"``, ``"SIGTERM"``, ``"stop_after_steps=N"``), said in the
    heading. The checkpoint lines list the files on disk now (never a file that is not there)."""
    from rich.console import Console

    from charlm.data.vocab import Vocab
    from charlm.sampling.sampler import sample

    console = Console(highlight=False, soft_wrap=True)
    out = Path(shown_path(cfg.paths.output_dir))
    step = trainer.global_step
    if stopped in ("SIGINT", "SIGTERM"):
        console.rule(f"[bold]charlm: training interrupted at step {step:,} ({stopped})")
    elif stopped:
        console.rule(f"[bold]charlm: training stopped at step {step:,} ({stopped})")
    else:
        console.rule("[bold]charlm: training finished")
    console.print(f"steps: {step:,} in {wall / 60:.1f} min")
    final = next((cb for cb in trainer.callbacks if isinstance(cb, FinalValidation)), None)
    val_step = final.last_val_step if final is not None else None
    if final is not None and final.off:
        console.print(f"no validation ({final.off}): no val loss, no best-by-val/loss checkpoints", markup=False)
    elif "val/loss" in metrics and val_step is not None:
        which = "final val loss" if val_step == trainer.global_step and not stopped else "last val loss"
        console.print(
            f"{which} (step {val_step:,}): [bold]{metrics['val/loss']:.4f}[/] nats/char, "
            f"bpc {metrics['val/bpc']:.4f}, perplexity {metrics['val/ppl']:.3f}"
        )
    if "best/val_loss" in metrics:
        console.print(f"best val loss: {metrics['best/val_loss']:.4f} nats/char ({metrics['best/val_bpc']:.4f} bpc)")
    if step > 0:  # an untrained network's sample says nothing
        text = sample(module.net, Vocab(module.vocab), None, 300, temperature=0.8, seed=cfg.seed)[0]
        console.rule("sample (temperature 0.8)")
        console.print(text, markup=False, emoji=False)  # verbatim: `:x:` or `[b]` in text stay as typed
    console.rule()
    say = lambda line: console.print(line, markup=False, emoji=False)  # noqa: E731 - paths verbatim
    say(f"run dir:     {out}")
    last, ckdir, lines = checkpoints_on_disk(trainer, out)
    say(f"checkpoints: {shown_path(ckdir)}: " + "; ".join(lines) if lines else "checkpoints: none written")
    wandb_dir = out / "wandb"
    if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers) and wandb_dir.is_dir():
        say(f"W&B files:   {wandb_dir} (offline; upload with `wandb sync {wandb_dir}/offline-run-*`)")
    if last is not None:
        say(f"sample it:   {command('charlm-sample', ckpt=shown_path(last))}")
    if stopped and last is not None:
        say(f"resume it:   {command('charlm-train', resume=out)}")
    elif stopped:
        why = "stopped before the first optimizer step" if step == 0 else "no last.ckpt was written"
        say(f"resume it:   nothing to resume ({why}); run the same command again to start over")


def checkpoints_on_disk(trainer: L.Trainer, out: Path) -> tuple[Path | None, Path, list[str]]:
    """What the run's checkpoint folder holds now: ``(last.ckpt or None, folder, lines)``, the
    lines naming ``last.ckpt`` with its step and the best-k files by ``val/loss``."""
    lastcb = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)), None)
    last = lastcb.last_path if lastcb is not None else out / "checkpoints" / "last.ckpt"
    ckdir = last.parent
    lines = []
    if last.is_file():
        lines.append(f"{last.name} (step {checkpoint_step(last):,})")
    else:
        last = None
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, LastCheckpoint) or not getattr(cb, "monitor", None):
            continue
        best = sorted(Path(p) for p in getattr(cb, "best_k_models", {}) if Path(p).is_file())
        if best:
            names = [p.name if p.parent == ckdir else str(p) for p in best]
            lines.append(f"best by {cb.monitor}: " + ", ".join(names))
    return last, ckdir, lines
