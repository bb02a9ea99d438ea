"""Resuming a run exactly, starting from another run's weights, and stopping cleanly.

- ``resume=<run dir or checkpoint>``: :func:`prepare_resume` finds ``last.ckpt``, recomposes the
  run's config from the overrides stored in the checkpoint (plus the new command line), refuses
  hyper-parameter changes (unless ``allow_changes=true``), points the run at the same run dir
  and W&B run id. Lightning then restores weights, optimizer, LR scheduler, loop counters and the
  train loader's position; :class:`~charlm.model.module.CharLM` restores the hidden state of
  every stream and the RNG states (this module's ``gather_*``/``restore_*`` helpers).
- ``init_from=<checkpoint>``: :func:`load_initial_weights`, weights only, vocabulary checked.
- :class:`StopControl`: ``stop_after_steps``, SIGTERM/SIGINT -> ``last.ckpt`` then stop, the same
  way at any moment.
- :class:`RunInfo`: stores the resolved config, its overrides and the W&B run id in every
  checkpoint (``checkpoint["charlm_run"]``), so a checkpoint alone is enough to resume; a run
  dir that was moved or copied resumes exactly (:func:`relocate_checkpoint_states`).
- :func:`check_new_run_dir`: a new run never writes into a run dir that holds another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.checkpoint import load_checkpoint
from charlm.errors import CharLMError
from charlm.training.callbacks import LastCheckpoint

log = logging.getLogger(__name__)

#: Keys whose change on resume alters the training (refused unless ``allow_changes=true``).
PROTECTED = ("seed", "nonfinite", "data", "model", "optimizer", "scheduler")
PROTECTED_TRAINER = ("precision", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "limit_train_batches")
#: Keys that may change on resume: they make the run longer or shorter.
EXTENDABLE = ("trainer.max_steps", "trainer.max_epochs", "trainer.max_time")
#: Keys under ``data`` that do not change what is trained on (locations, eval layout); the
#: per-device ``batch_size`` is compared as the global number of streams instead.
DATA_FREE = ("data.data_dir", "data.cache_dir", "data.eval_batch_size", "data.eval_burn_in", "data.batch_size")
#: Command-line keys that belong to one invocation, never stored as the run's overrides.
TRANSIENT = ("resume", "stop_after_steps", "allow_changes", "init_from", "ckpt_path")


# ---------------------------------------------------------------------- checkpoints and run dirs
def find_checkpoint(target: str | Path, option: str = "resume") -> tuple[Path, Path | None]:
    """``(checkpoint file, run dir)`` for ``<option>=<target>`` (``resume=`` or ``ckpt_path=``).

    ``target`` is a run dir (its ``checkpoints/last.ckpt`` is used), a ``checkpoints`` folder,
    or a ``.ckpt`` file. The run dir is the folder above ``checkpoints/`` (``None`` when the
    checkpoint does not sit in a run dir's ``checkpoints/`` folder).

    Raises:
        CharLMError: if no checkpoint is found (a resume never silently starts from scratch),
            naming ``option`` as the user gave it.
    """
    undo = "to start a new run drop resume=" if option == "resume" else f"give an existing .ckpt file or drop {option}="
    p = Path(str(target)).expanduser()
    if p.is_dir():
        for c in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if c.is_file():
                p = c
                break
        else:
            raise CharLMError(
                f"{option}={target}: no checkpoint found (looked for checkpoints/last.ckpt and last.ckpt under it). "
                f"Give a run dir that has written a checkpoint, or a .ckpt file; {undo}."
            )
    elif not p.is_file():
        raise CharLMError(f"{option}={target}: no such run dir or checkpoint file; {undo}.")
    p = p.resolve()
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
    return p, run_dir


#: What a training leaves in its run dir (globs); a new training refuses a dir that holds any.
RUN_FILES = ("checkpoints/*.ckpt", "csv/metrics.csv", "samples.txt", "wandb/offline-run-*", "wandb/run-*")


def check_new_run_dir(out: str | Path) -> None:
    """Refuse to start a new run (no ``resume=``) in a run dir that already holds one.

    A second training there would mix two runs: Lightning would write its ``last.ckpt`` as
    ``last-v1.ckpt`` beside the first run's, the CSV logger would delete the first run's
    ``metrics.csv``, and samples, best-k files and W&B folders would interleave. Checked on
    global rank 0 only (other ranks start after rank 0 has created its files).

    Raises:
        CharLMError: naming what the dir holds, and the two ways on: ``resume=<dir>`` or another dir.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    out = Path(out)
    found = [str(p.relative_to(out)) for pattern in RUN_FILES for p in sorted(out.glob(pattern))]
    if not found:
        return
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise CharLMError(
        f"{out} already holds a training run ({shown}); a new run there would mix the two. "
        f"Continue that run with charlm-train resume={out}, or start the new one in another dir "
        "(drop hydra.run.dir=, or give a new one)."
    )


class NewRunDirGuard(HydraCallback):
    """Hydra callback (``hydra.callbacks`` of ``charlm-train``): a single run (not ``-m``)
    without ``resume=`` checks its run dir with :func:`check_new_run_dir` in ``on_run_start``,
    before Hydra writes ``.hydra/`` and the log there, so a refused run leaves the other run's
    files as they were. A refusal prints ``error: ...`` and exits with status 2, as every bad
    input of the command line does."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import sys

        try:
            if OmegaConf.select(config, "resume", default=None):
                return
            run_dir = OmegaConf.select(config, "hydra.run.dir", default=None)
        except Exception:  # pragma: no cover - an unresolvable dir: train() checks it again
            return
        if not run_dir:
            return
        try:
            check_new_run_dir(run_dir)
        except CharLMError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)


def relocate_checkpoint_states(trainer: L.Trainer, checkpoint: dict) -> None:
    """Point the checkpoint callbacks' saved bookkeeping at the run dir they write to now.

    Lightning's ``ModelCheckpoint`` state holds absolute paths (``dirpath``, ``best_k_models``,
    ``best_model_path``, ``kth_best_model_path``, ``last_model_path``) and drops all but
    ``best_model_path`` when ``dirpath`` differs, so a run dir that was moved or copied would
    resume with no best-k ranking and write ``last-v1.ckpt`` beside a stale ``last.ckpt``.
    Paths under the saved ``dirpath`` are rewritten, in ``checkpoint`` in place, to the same
    names under each callback's current ``dirpath``; other paths are left as they are.
    """
    states = checkpoint.get("callbacks") or {}
    for cb in trainer.checkpoint_callbacks:
        state = states.get(getattr(cb, "state_key", None))
        new = getattr(cb, "dirpath", None)
        old = state.get("dirpath") if isinstance(state, dict) else None
        if not old or not new or str(old) == str(new):
            continue
        old, new = str(old), str(new)

        def moved(path: Any) -> Any:
            if isinstance(path, str) and path.startswith(old + os.sep):
                return new + path[len(old):]
            return path

        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = moved(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = new
        log.info("the run dir moved (checkpoints were in %s, now %s): the checkpoint bookkeeping follows it", old, new)


def resume_run_dir(target: Any, default: str) -> str:
    """OmegaConf resolver ``charlm.run_dir``: the run dir of ``resume=<target>`` (so Hydra writes
    into the run being resumed instead of a new folder), else ``default``. Never raises: a bad
    target is reported by :func:`prepare_resume`."""
    if target in (None, "", "None", "null"):
        return default
    try:
        _, run_dir = find_checkpoint(target)
    except CharLMError:
        return default
    return str(run_dir) if run_dir is not None else default


def _split_override(o: str) -> str:
    key = o.split("=", 1)[0]
    return key.lstrip("+~")


def merge_overrides(*lists: list[str]) -> list[str]:
    """Concatenate Hydra override lists, a later value of a key replacing an earlier one
    (Hydra refuses two values for one key)."""
    out: dict[str, str] = {}
    for lst in lists:
        for o in lst:
            k = _split_override(o)
            out.pop(k, None)
            out[k] = o
    return list(out.values())


def current_overrides(cfg: DictConfig) -> list[str]:
    """The command-line overrides of this run (``hydra.overrides.task``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except Exception:  # pragma: no cover
        pass
    sel = OmegaConf.select(cfg, "hydra.overrides.task")
    return list(sel) if sel is not None else []


def run_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define the run (without one invocation's ``resume=``, ``stop_after_steps=`` ...)."""
    return [o for o in overrides if _split_override(o) not in TRANSIENT and not _split_override(o).startswith("hydra.")]


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from charlm.config import config_dir

    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def _global_streams(c: dict) -> int:
    t = c.get("trainer", {})
    devices = t.get("devices", 1)
    n = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, (list, tuple)) else 1)
    return int(c["data"]["batch_size"]) * max(int(n), 1) * int(t.get("num_nodes", 1) or 1)


def _added_default(key: str, value) -> bool:
    """Whether ``key`` is a model option added after a run began, set to its default (which is
    what that run trained with): the AWD-LSTM regularisers, off by default."""
    from charlm.model.rnn import REGULARISERS

    return key.startswith("model.") and key.split(".", 1)[1] in REGULARISERS and value == 0.0


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """``(protected changes, extensions)`` between two resolved configs, as ``"key: a -> b"``."""
    fo, fn = _flatten(old), _flatten(new)
    changed, extended = [], []
    for k in sorted(set(fo) | set(fn)):
        a, b = fo.get(k, "<unset>"), fn.get(k, "<unset>")
        if a == b or (a == "<unset>" and _added_default(k, b)):
            continue
        top = k.split(".")[0]
        item = f"{k}: {a!r} -> {b!r}"
        if k in EXTENDABLE:
            extended.append(item)
        elif top in PROTECTED and k not in DATA_FREE and not k.startswith("data.path") and not k.startswith("data.source"):
            changed.append(item)
        elif top == "trainer" and k.split(".", 1)[1] in PROTECTED_TRAINER:
            changed.append(item)
    go, gn = _global_streams(old), _global_streams(new)
    if go != gn:
        changed.append(
            f"global streams (data.batch_size x devices x nodes): {go} -> {gn} "
            "(to resume on another number of devices keep the product: e.g. 2 devices x 4 -> 1 device x 8)"
        )
    return changed, extended


def _lr_factor(sched_cfg: dict | None, total: int, step: int) -> float | None:
    """The schedule's LR multiplier at ``step`` for a run of ``total`` steps (step-interval
    ``LambdaLR`` schedules only; ``None`` otherwise)."""
    if not sched_cfg:
        return None
    from hydra.utils import instantiate

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        d = instantiate(sched_cfg)(opt, total_steps=total)
    except Exception:  # pragma: no cover - a schedule we cannot evaluate offline
        return None
    if not d or d.get("interval") != "step" or not hasattr(d["scheduler"], "lr_lambdas"):
        return None
    return float(d["scheduler"].lr_lambdas[0](step))


def describe_extension(old: dict, new: dict, step: int) -> str:
    """What extending the run does to the learning-rate schedule (for the log)."""
    to, tn = old["trainer"].get("max_steps", -1), new["trainer"].get("max_steps", -1)
    msg = (
        "the LR schedule is rebuilt for the new length (Trainer.estimated_stepping_batches); "
        "the optimizer and scheduler step counts continue from the checkpoint."
    )
    if isinstance(to, int) and isinstance(tn, int) and to > 0 and tn > 0 and to != tn:
        fa, fb = _lr_factor(new.get("scheduler"), to, step), _lr_factor(new.get("scheduler"), tn, step)
        lr = (new.get("optimizer") or {}).get("lr")
        if fa is not None and fb is not None and lr is not None:
            msg += (
                f" The schedule now spans {tn} steps instead of {to}: at step {step} the learning rate "
                f"goes from {lr * fa:.3g} to {lr * fb:.3g} and follows the new curve from there."
            )
        else:
            msg += f" It now spans {tn} steps instead of {to}."
    return msg


def prepare_resume(cfg: DictConfig) -> tuple[DictConfig, Path, list[str]]:
    """Turn a ``resume=<run dir or checkpoint>`` config into the config of the resumed run.

    Returns ``(config, checkpoint path, run overrides)``: the run's own config (recomposed from
    the overrides stored in the checkpoint, then this command line's overrides), its output dir
    set to the original run dir and, with W&B, the original run id.

    The corpus itself is compared after it is prepared, by :func:`check_resumed_corpus`.

    Raises:
        CharLMError: no checkpoint found; a checkpoint without charlm run info; or a
            hyper-parameter changed without ``allow_changes=true`` (the message lists them).
    """
    ckpt_path, run_dir = find_checkpoint(cfg.resume)
    ckpt = load_checkpoint(ckpt_path)
    run = ckpt.get("charlm_run")
    if not run:
        raise CharLMError(
            f"{ckpt_path} has no run information (not written by charlm-train with resume support); "
            f"continue from it with ckpt_path={ckpt_path} or start from its weights with init_from={ckpt_path}."
        )
    new_cli = current_overrides(cfg)
    overrides = merge_overrides(list(run["overrides"]), run_overrides(new_cli))
    new = _compose(merge_overrides(overrides, [o for o in new_cli if _split_override(o) in TRANSIENT]))
    out_dir = str(run_dir) if run_dir is not None else str(cfg.paths.output_dir)
    with open_dict(new):
        new.paths.output_dir = out_dir
        if "hydra" in new:
            del new["hydra"]
        if OmegaConf.select(new, "logger.wandb") is not None and run.get("wandb_id"):
            new.logger.wandb.id = run["wandb_id"]
            # offline with a CSV log, the resumed process writes the whole W&B run again
            # (rebuild_wandb_history): a new run as far as W&B is concerned, not a resumed one
            new.logger.wandb.resume = None if rebuilds_wandb_history(new) else "allow"
    old_resolved = dict(run["config"])
    new_resolved = _resolved(new)
    changed, extended = config_changes(old_resolved, new_resolved)
    step = int(ckpt.get("global_step", 0))
    if changed and not new.get("allow_changes", False):
        raise CharLMError(
            f"resume={cfg.resume}: these settings differ from the run's ({ckpt_path}):\n  "
            + "\n  ".join(changed)
            + "\nResume with the run's own settings (drop these overrides), start a new run from its weights "
            f"with init_from={ckpt_path}, or pass allow_changes=true to continue with the new values "
            "(the optimizer and LR-scheduler states, learning rate included, are still restored from the checkpoint; "
            "everything else is used as configured)."
        )
    if changed:
        log.warning("resuming with changed settings (allow_changes=true):\n  %s", "\n  ".join(changed))
    if extended:
        log.info("resuming with a new run length: %s; %s", "; ".join(extended), describe_extension(old_resolved, new_resolved, step))
    if run_dir is not None:
        keep_newer_last(ckpt_path, run_dir, step)
    log.info("resuming %s from %s (step %d)", out_dir, ckpt_path, step)
    return new, ckpt_path, overrides


def check_resumed_corpus(ckpt_path: str | Path, corpus, allow_changes: bool = False, target: Any = None) -> None:
    """Refuse to resume onto a corpus whose content is not the one the checkpoint was trained on.

    Compares the corpus as prepared now (``corpus``: a
    :class:`~charlm.data.corpus.PreparedCorpus`) with the checkpoint's ``charlm`` entry: its
    vocabulary (``vocab``) and the sha256 of the file's bytes (``data.sha256``). A checkpoint
    without a stored hash (older format) is only compared by vocabulary.

    Raises:
        CharLMError: if the vocabulary differs (always: the ids would mean other characters;
            the message lists the characters only in one of them), or the content differs with
            the same vocabulary and ``allow_changes`` is false (the message gives both hashes
            and lengths and the ways on).
    """
    entry = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("charlm") or {}
    data = entry.get("data") or {}
    what = f"resume={target if target is not None else ckpt_path}"
    old_vocab, new_vocab = list(entry.get("vocab") or []), list(corpus.vocab.chars)
    if old_vocab and old_vocab != new_vocab:
        only_old = sorted(set(old_vocab) - set(new_vocab))
        only_new = sorted(set(new_vocab) - set(old_vocab))
        raise CharLMError(
            f"{what}: the corpus {corpus.source} no longer has the run's vocabulary "
            f"({len(old_vocab)} -> {len(new_vocab)} characters; only in the run's: {only_old!r}; only in the "
            f"file now: {only_new!r}), so the model cannot continue on it (allow_changes=true does not change "
            "that). Restore the text the run was trained on"
            + (f" (sha256 {data['sha256'][:16]}...)" if data.get("sha256") else "")
            + ", or train a new run on this one."
        )
    old_sha = data.get("sha256")
    if not old_sha or old_sha == corpus.sha256:
        return
    change = (
        f"the corpus {corpus.source} changed since the checkpoint was written (sha256 {old_sha[:16]}... -> "
        f"{corpus.sha256[:16]}..., {int(data.get('num_chars', 0)):,} -> {corpus.num_chars:,} characters, "
        "same vocabulary)"
    )
    if not allow_changes:
        raise CharLMError(
            f"{what}: {change}. Resume on the text the run was trained on (restore the file), or pass "
            "allow_changes=true to continue training on the changed text."
        )
    log.warning("%s (allow_changes=true): training continues on the changed text", change)


def keep_newer_last(ckpt_path: Path, run_dir: Path, step: int) -> Path | None:
    """Before resuming a run dir from an earlier checkpoint (a best-k one at ``step``), move a
    newer ``checkpoints/last.ckpt`` aside to ``last-step<N>.ckpt`` (``last-step<N>-2.ckpt``, ...
    if taken), with a warning, so the resumed run's first save does not overwrite it.

    Returns the new path of the moved file, or ``None`` when nothing was moved (no last.ckpt,
    it is ``ckpt_path`` itself, or it is not newer than ``step``).
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file() or last.resolve() == Path(ckpt_path).resolve():
        return None
    try:
        last_step = checkpoint_step(last)
    except Exception:  # an unreadable last.ckpt is kept aside too: it may still be of use
        last_step = -1
    if 0 <= last_step <= step:
        return None
    base = f"last-step{last_step}" if last_step >= 0 else "last-unreadable"
    aside, n = last.with_name(f"{base}.ckpt"), 2
    while aside.exists():
        aside, n = last.with_name(f"{base}-{n}.ckpt"), n + 1
    os.replace(last, aside)
    log.warning(
        "resuming from %s (step %d), but the run's last.ckpt is newer (step %d): moved it to %s so it is "
        "not overwritten (resume=%s continues from it instead)", ckpt_path, step, last_step, aside, aside,
    )
    return aside


def _resolved(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    c.pop("hydra", None)
    return c


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` (optimizer steps done) of a checkpoint file (memory-mapped read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def keep_csv_history(trainer: L.Trainer, step: int) -> list[dict[str, str]] | None:
    """Keep a resumed run's ``metrics.csv``: Lightning's ``CSVLogger`` deletes an existing file
    when it starts, so the rows logged up to the checkpoint's ``step`` are put back (rows logged
    after it, by a run killed before its next checkpoint, are dropped: those steps run again).

    Returns:
        the rows kept (``csv.DictReader`` rows: column -> text, empty where a row has no value),
        or ``None`` when there is no CSV logger or no ``metrics.csv`` (and on ranks other than 0).
    """
    import csv
    import io

    from lightning.pytorch.loggers import CSVLogger

    kept: list[dict[str, str]] | None = None
    for lg in trainer.loggers:
        if not isinstance(lg, CSVLogger) or not trainer.is_global_zero:
            continue
        path = Path(lg.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        header = list(csv.DictReader(io.StringIO(text)).fieldnames or [])
        writer = lg.experiment  # creating the writer deletes the file
        keep = [r for r in rows if r.get("step") in (None, "") or int(float(r["step"])) < step]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(keep)
        writer.metrics_keys = sorted(set(header))
        if kept is None:
            kept = keep
    return kept


# ---------------------------------------------------------------------- W&B history on resume
#: Where earlier W&B folders of a resumed run go (under ``<run dir>/wandb/``), out of the reach
#: of ``wandb sync <run dir>/wandb/offline-run-*`` and ``wandb sync <run dir>/wandb``.
SUPERSEDED_WANDB = "superseded"


def rebuilds_wandb_history(cfg: DictConfig) -> bool:
    """Whether resuming ``cfg``'s run writes its whole W&B run again (:func:`rebuild_wandb_history`):
    W&B offline (the default) and a CSV logger to take the history from. Online, or without a
    CSV log, the W&B run is resumed as W&B does it (``resume="allow"``)."""
    wb = OmegaConf.select(cfg, "logger.wandb", default=None)
    if wb is None:
        return False
    offline = bool(wb.get("offline", False)) or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")
    loggers = OmegaConf.select(cfg, "logger", default=None) or {}
    has_csv = any(c is not None and str(c.get("_target_", "")).endswith("CSVLogger") for c in loggers.values())
    return offline and has_csv


def rebuild_wandb_history(trainer: L.Trainer, ckpt_path: str | Path, rows: list[dict[str, str]] | None) -> list[Path]:
    """Make a resumed run's offline W&B files hold the whole run, each step once.

    W&B (0.31) cannot drop what an earlier process logged after the checkpoint: ``wandb sync``
    uploads a resumed run's offline folders one after the other, so steps run again after a
    resume from an earlier checkpoint (a SIGKILL between checkpoints, ``resume=<best-k file>``)
    would appear twice, and a killed process leaves its last seconds unwritten (its ``.wandb``
    file may even hold the header only). Instead, before the W&B run starts:

    1. the run's earlier offline folders (``wandb/offline-run-*-<id>``) are moved to
       ``wandb/superseded/`` (kept, but out of the reach of ``wandb sync``);
    2. the new folder (same run id) gets the history up to the checkpoint again: the CSV rows
       kept by :func:`keep_csv_history` (``rows``; every row the loggers received, W&B's
       included) and the ``samples`` table at each validation, from the rows of
       :class:`~charlm.training.callbacks.SampleText` stored in the checkpoint, in step order.

    Training then logs from the checkpoint on, so the one folder holds each step once, in order.
    Rank 0 only. Returns the folders moved aside.
    """
    from lightning.pytorch.loggers import WandbLogger

    from charlm.training.callbacks import SampleText

    if not trainer.is_global_zero:
        return []
    moved: list[Path] = []
    samples = next((cb for cb in trainer.callbacks if isinstance(cb, SampleText)), None)
    sample_rows: list[list] = []
    if samples is not None:
        states = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("callbacks") or {}
        sample_rows = [list(r) for r in (states.get(samples.state_key) or {}).get("rows", [])]
    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger) or not lg.save_dir or not lg.version:
            continue
        folder = Path(lg.save_dir) / "wandb"
        for old in sorted(folder.glob(f"offline-run-*-{lg.version}")):
            aside = folder / SUPERSEDED_WANDB / old.name
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, aside)
            moved.append(aside)
        events: list[tuple[int, int, int, Any]] = []
        for i, row in enumerate(rows or []):
            metrics = {k: _csv_number(v) for k, v in row.items() if k != "step" and v not in (None, "")}
            if metrics and row.get("step") not in (None, ""):
                events.append((int(float(row["step"])), 0, i, metrics))
        for i, step in enumerate(dict.fromkeys(int(r[0]) for r in sample_rows)):
            events.append((step, 1, i, [r for r in sample_rows if int(r[0]) <= step]))
        for step, kind, _, payload in sorted(events, key=lambda e: e[:3]):
            if kind == 0:
                lg.log_metrics(payload, step=step)
            else:
                SampleText.log_table(lg, step, payload)
        if moved or events:
            log.info(
                "W&B: the run's history up to the checkpoint was written again into the new offline folder "
                "(%d metric rows, %d samples tables)%s; it holds the whole run",
                sum(1 for e in events if e[1] == 0), sum(1 for e in events if e[1] == 1),
                f"; earlier folders moved to {folder / SUPERSEDED_WANDB}" if moved else "",
            )
    return moved


def _csv_number(text: str) -> int | float:
    """A metric value as the CSV logger wrote it (``repr`` of an int or a float): the same number."""
    try:
        return int(text)
    except ValueError:
        return float(text)


# ---------------------------------------------------------------------- init_from
def load_initial_weights(module, path: str | Path) -> Path:
    """``init_from=<checkpoint>``: copy a checkpoint's network weights into ``module`` (a new run
    with its own optimizer and schedule).

    Raises:
        CharLMError: if the vocabularies differ (the message lists the characters only in one of
            them; ids are never re-mapped) or the network shapes differ.
    """
    from charlm.checkpoint import load_checkpoint as _load

    p = Path(str(path)).expanduser()
    ckpt = _load(p)
    entry = ckpt["charlm"]
    old_vocab, new_vocab = list(entry["vocab"]), list(module.vocab)
    if old_vocab != new_vocab:
        only_old = sorted(set(old_vocab) - set(new_vocab))
        only_new = sorted(set(new_vocab) - set(old_vocab))
        raise CharLMError(
            f"init_from={path}: the corpus's vocabulary differs from the checkpoint's "
            f"({len(new_vocab)} vs {len(old_vocab)} characters); only in the checkpoint: {only_old!r}; "
            f"only in this corpus: {only_new!r}"
            + ("; same characters in another order" if not only_old and not only_new else "")
            + ". init_from needs exactly the checkpoint's vocabulary (characters are never re-mapped): "
            "use a corpus with the same characters."
        )
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        module.net.load_state_dict(state)
    except RuntimeError as e:
        raise CharLMError(
            f"init_from={path}: the checkpoint's network {entry['model']} does not fit this model "
            f"{module.net.config()}: {str(e).splitlines()[0]}. Use the checkpoint's model settings."
        ) from None
    log.info("initialised the weights from %s (new optimizer and schedule)", p)
    return p


# ---------------------------------------------------------------------- train state across ranks
def gather_train_state(module: L.LightningModule, state) -> list[torch.Tensor] | None:
    """Every rank's hidden state ``[num_layers, B, H]`` -> the global ``[num_layers, W*B, H]``
    (CPU tensors, streams in global order: rank 0's first). A collective under DDP: every rank
    calls it (Lightning dumps checkpoints on every rank; rank 0 writes)."""
    if state is None:
        return None
    trainer = module._trainer
    world = trainer.world_size if trainer is not None else 1
    if world == 1:
        return [s.detach().cpu().clone() for s in state]
    out = []
    for s in state:
        g = module.all_gather(s.detach())  # [W, L, B, H]
        w, layers, b, h = g.shape
        out.append(g.permute(1, 0, 2, 3).reshape(layers, w * b, h).cpu())
    return out


def local_train_state(module: L.LightningModule, state: list[torch.Tensor] | None):
    """This rank's streams of a global hidden state ``[num_layers, G, H]`` -> ``[num_layers, B, H]``.

    Raises:
        CharLMError: if ``G`` does not divide into the ranks.
    """
    if state is None:
        return None
    trainer = module.trainer
    world, rank = trainer.world_size, trainer.global_rank
    g = int(state[0].shape[1])
    if g % world:
        raise CharLMError(f"the checkpoint holds {g} streams, which do not divide into {world} devices")
    b = g // world
    return tuple(s[:, rank * b:(rank + 1) * b].to(module.device).contiguous() for s in state)


def _rng_state() -> dict[str, Any]:
    v, st, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(st),
        "python_version": v,
        "python_gauss": gauss,
    }


def gather_rng_states(module: L.LightningModule) -> dict[str, Any]:
    """``{"world_size": W, "ranks": [rng of rank 0, ...]}`` (torch CPU, CUDA and python RNGs of
    every rank; a collective under DDP)."""
    trainer = module._trainer
    world = trainer.world_size if trainer is not None else 1
    mine = _rng_state()
    if world == 1 or not torch.distributed.is_initialized():
        return {"world_size": 1, "ranks": [mine]}
    ranks: list[Any] = [None] * world
    torch.distributed.all_gather_object(ranks, mine)
    return {"world_size": world, "ranks": ranks}


def restore_rng_states(module: L.LightningModule, rng: dict[str, Any] | None) -> None:
    """Restore this rank's RNG states; on another number of devices every rank takes rank 0's
    (the run continues, but dropout masks then differ from a run never stopped)."""
    if not rng:
        return
    if "ranks" not in rng:  # checkpoint format 1: this rank's states only
        rng = {"world_size": 1, "ranks": [rng]}
    trainer = module._trainer
    world = trainer.world_size if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    same = int(rng["world_size"]) == world
    if not same:
        log.warning(
            "the checkpoint was written by %d process(es) and this run has %d: the RNG states (dropout) "
            "of rank 0 are used on every rank, so dropout masks differ from a run never stopped",
            rng["world_size"], world,
        )
    r = rng["ranks"][rank if same else 0]
    torch.set_rng_state(r["torch"].cpu() if hasattr(r["torch"], "cpu") else r["torch"])
    if r.get("cuda") and torch.cuda.is_available() and len(r["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in r["cuda"]])
    random.setstate((r["python_version"], tuple(r["python"]), r["python_gauss"]))


# ---------------------------------------------------------------------- callbacks
class RunInfo(L.Callback):
    """Stores ``{"config", "overrides", "wandb_id"}`` in every checkpoint as
    ``checkpoint["charlm_run"]``: the resolved config, the Hydra overrides that compose it and
    the W&B run id, which is all ``resume=`` needs besides the checkpoint. On loading, points
    the checkpoint callbacks' saved paths at the run dir as it is now
    (:func:`relocate_checkpoint_states`)."""

    def __init__(self, config: dict, overrides: list[str]):
        self.config = config
        self.overrides = list(overrides)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        wandb_id = None
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                try:
                    wandb_id = str(lg.version) if lg.version is not None else None
                except Exception:  # pragma: no cover
                    wandb_id = None
        checkpoint["charlm_run"] = {"config": self.config, "overrides": self.overrides, "wandb_id": wandb_id}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # runs before any callback's load_state_dict: the checkpoint callbacks then load paths
        # of the run dir as it is now (moved or copied run dirs resume exactly)
        relocate_checkpoint_states(trainer, checkpoint)


class TrainingInterrupted(Exception):
    """Raised by :func:`charlm.cli.train.train` after a run stopped on SIGINT/SIGTERM (``last.ckpt``
    of the last completed step written, when there was one, and the summary printed), so the run is
    not taken for a finished one.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        step: the optimizer step it stopped after (0: before the first one).
        metrics: the metrics at that point (as :func:`~charlm.cli.train.train` returns them).
        exit_code: ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), as shells report.
    """

    def __init__(self, signal_name: str, step: int, metrics: dict[str, float] | None = None):
        self.signal_name = signal_name
        self.step = step
        self.metrics = metrics
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGTERM))
        super().__init__(f"training interrupted by {signal_name} at step {step}")


class StopTraining(Exception):
    """Raised by :class:`StopControl` from ``on_train_batch_start`` once a stop is decided (and
    ``last.ckpt`` written): it leaves ``Trainer.fit`` before anything else happens, so a stopped
    run holds no validation, best-k file, sample or end-of-training page that a run never stopped
    would not have at that step. :func:`charlm.cli.train.train` catches it."""


#: the signals that stop a run cleanly
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopControl(L.Callback):
    """Stops training cleanly at an optimizer-step boundary, ``last.ckpt`` written.

    - ``stop_after_steps=N``: after ``N`` optimizer steps (the LR schedule still spans the
      configured run, so the stopped run is a prefix of the full one).
    - SIGINT (Ctrl-C) and SIGTERM (also what SLURM sends before a kill), at any moment: the step
      in progress finishes, ``last.ckpt`` of it is written, training stops. A second Ctrl-C
      aborts at once. Before the first optimizer step nothing is trained or written (there is
      nothing to resume); during a validation, the validation finishes first.

    One path for every stop: the decision is taken after a step (``on_train_batch_end``) or after
    a validation (``on_validation_end``, for a signal that came during it); ``last.ckpt`` is
    written by ``last_checkpoint`` (:meth:`~charlm.training.callbacks.LastCheckpoint.write_last`,
    after the step's validation when the step is a validation step, as in a run never stopped);
    the next ``on_train_batch_start`` raises :class:`StopTraining`, so the stop step gets no
    validation, best-k file or sample that a run never stopped would not have. Under DDP the ranks
    decide together (any rank signalled) before the collective save.

    Signals: :meth:`catching_signals` installs charlm's handler for SIGINT and SIGTERM for the
    whole training (data preparation and logger set-up included). ``Trainer.fit`` adds
    Lightning's SIGTERM handler, which makes the loops raise ``SIGTERMException`` at their next
    boundary without a checkpoint (the window that lost runs: a SIGTERM after the end-of-step
    check and before the loop's own check left no ``last.ckpt``); from ``on_train_start`` on,
    charlm's handler answers SIGTERM alone again, and a SIGTERM Lightning caught before that
    stops the run before its first step.
    """

    def __init__(self, stop_after_steps: int | None = None):
        self.stop_after_steps = int(stop_after_steps) if stop_after_steps else None
        #: the first stop signal received ("SIGINT" or "SIGTERM"), None if none
        self.signalled: str | None = None
        #: why training stopped early: "SIGINT", "SIGTERM" or "stop_after_steps=N"; None if it did not
        self.reason: str | None = None
        #: the optimizer step training stopped after (None if it did not stop early)
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}
        self._first_batch = True

    # ------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def catching_signals(self):
        """Context manager: SIGINT and SIGTERM only record the stop request while it is open (the
        previous handlers are restored on exit). Only in the main thread (elsewhere Python cannot
        install handlers, and the signals keep their previous handling)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        try:
            yield self
        finally:
            for s, h in self._previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signalled == "SIGINT":  # second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.signalled is None:
            self.signalled = name
            # os.write, not logging/print: a handler may run in the middle of a write to the
            # same stream, and Python's buffered streams refuse re-entry
            hint = " (Ctrl-C again to abort at once)" if name == "SIGINT" else ""
            msg = f"\n{name}: stopping cleanly; the step in progress finishes and is written to last.ckpt{hint}\n"
            try:
                os.write(2, msg.encode())
            except OSError:  # pragma: no cover - stderr closed
                pass

    def note_signal(self, name: str) -> None:
        """Record a stop signal that was caught elsewhere (Lightning's ``SIGTERMException``)."""
        if self.signalled is None:
            self.signalled = name

    def stop_before_training(self, step: int = 0) -> None:
        """Training stopped (or never started) before its first optimizer step of this process:
        nothing new was trained or written."""
        if self.reason is None:
            self.reason = self.signalled or "SIGTERM"
            self.stopped_at = step

    # ------------------------------------------------------------------ the stop path
    def _pending(self, trainer: L.Trainer, signals_only: bool = False) -> str | None:
        if self.signalled:
            return self.signalled
        if not signals_only and self.stop_after_steps is not None and trainer.global_step >= self.stop_after_steps:
            return f"stop_after_steps={self.stop_after_steps}"
        return None

    @staticmethod
    def _together(trainer: L.Trainer, local: bool) -> bool:
        """Whether any rank wants to stop (a collective under DDP)."""
        return bool(trainer.strategy.reduce_boolean_decision(local, all=False)) if trainer.world_size > 1 else local

    def _stop(self, trainer: L.Trainer, reason: str | None, save: bool = True) -> None:
        self.reason = reason or "SIGTERM"  # None: another rank was signalled
        self.stopped_at = trainer.global_step
        if not save:
            return
        last = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)), None)
        if last is None:
            if trainer.is_global_zero:
                log.warning("stopping after step %d (%s) without a checkpoint: the last_checkpoint callback is "
                            "disabled", trainer.global_step, self.reason)
            return
        last.write_last(trainer)  # during a validation: when it ends
        if trainer.is_global_zero:
            from charlm.cli.common import command, shown_path

            log.warning("stopping after step %d (%s), saved to %s. Continue with: %s",
                        trainer.global_step, reason or "another rank was signalled", shown_path(last.last_path),
                        command("charlm-train", resume=shown_path(trainer.default_root_dir)))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_batch = True
        if self._previous:  # inside catching_signals: take SIGTERM back from Lightning
            for s in STOP_SIGNALS:
                signal.signal(s, self._on_signal)
        if trainer.received_sigterm:  # caught by Lightning's handler after Trainer.fit installed it
            self.note_signal("SIGTERM")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if self.stopped_at is not None:
            raise StopTraining(self.reason)
        if self._first_batch:  # a stop requested before this process trained a step: none is trained
            self._first_batch = False
            reason = self._pending(trainer)
            if self._together(trainer, reason is not None):
                self._stop(trainer, reason, save=False)
                if trainer.is_global_zero:
                    log.warning("stopping before the first optimizer step (%s): nothing trained", self.reason)
                raise StopTraining(self.reason)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.stopped_at is None:
            reason = self._pending(trainer)
            if self._together(trainer, reason is not None):
                self._stop(trainer, reason)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a signal that came during this validation: the step is complete, stop now (a
        # stop_after_steps is decided at the step's end, before its validation)
        if trainer.sanity_checking or self.stopped_at is not None or trainer.state.fn != "fit":
            return
        reason = self._pending(trainer, signals_only=True)
        if self._together(trainer, reason is not None):
            self._stop(trainer, reason)


def resolve_num_devices(cfg: DictConfig) -> int:
    """The number of devices (processes per node) the Trainer of ``cfg`` would use, resolved as
    Lightning resolves ``trainer.accelerator`` and ``trainer.devices``: ``"auto"``/``"gpu"``
    pick the accelerator, ``devices="auto"`` is its ``auto_device_count()`` (1 on the CPU),
    ``-1`` all GPUs, ``"0,1"`` or ``[0, 1]`` those GPUs (Lightning's own parsing helpers, so
    the count is the one the Trainer gets).

    Raises:
        CharLMError: if Lightning refuses the combination (e.g. ``trainer.devices=-1`` on the
            CPU, or a GPU accelerator on a machine without one), with its reason.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    devices = OmegaConf.select(cfg, "trainer.devices", default="auto")
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    try:
        if not isinstance(accelerator, str):
            raise TypeError("only an accelerator name (auto, cpu, gpu, cuda, mps, tpu) can be checked here")
        name = accelerator
        if name == "auto":
            name = _AcceleratorConnector._choose_auto_accelerator()
        elif name == "gpu":
            name = _AcceleratorConnector._choose_gpu_accelerator_backend()
        if name not in AcceleratorRegistry:
            raise ValueError(f"unknown accelerator {name!r}; Lightning has {sorted(AcceleratorRegistry.available_accelerators())}")
        acc = AcceleratorRegistry[name]["accelerator"]
        if not acc.is_available():
            raise MisconfigurationException(f"the {name} accelerator is not available on this machine")
        if devices == "auto":
            devices = acc.auto_device_count()
        return len(acc.get_parallel_devices(acc.parse_devices(devices)))
    except (MisconfigurationException, TypeError, ValueError) as e:
        raise CharLMError(
            f"trainer.devices={devices!r} with trainer.accelerator={accelerator!r} is not a valid device choice "
            f"here: {str(e).strip()}"
        ) from None


def check_multirun_ddp(cfg: DictConfig) -> None:
    """Refuse a Hydra multirun whose jobs would launch DDP processes themselves.

    Lightning's subprocess launcher re-runs the command line for every extra rank, which in a
    multirun would start the whole sweep again. Jobs may use several devices when a launcher
    starts one process per device (SLURM via ``hydra/launcher=submitit_slurm`` with
    ``tasks_per_node`` = devices per node, or torchrun). The device count is resolved as the
    Trainer resolves it (:func:`resolve_num_devices`): ``trainer.devices=-1`` on a machine with
    two GPUs is two devices, ``"auto"`` on the CPU is one.

    Raises:
        CharLMError: in a multirun with more than one device per job and no external launcher,
            or with a device choice Lightning refuses.
    """
    from charlm.cli.common import is_multirun

    if not is_multirun():
        return
    n = resolve_num_devices(cfg)
    nodes = int(OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1)
    if n * nodes <= 1:
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return
    raise CharLMError(
        f"this multirun's jobs use {n * nodes} devices each, but no launcher starts one process per device "
        "(Lightning would re-run the whole sweep for every extra rank). Run the sweep with one device per job "
        "(trainer.devices=1), or launch it on SLURM with hydra/launcher=submitit_slurm and "
        "hydra.launcher.tasks_per_node=<devices per node> (see README, 'Resuming and scaling out')."
    )


__all__ = [
    "RunInfo",
    "STOP_SIGNALS",
    "StopControl",
    "StopTraining",
    "TrainingInterrupted",
    "check_multirun_ddp",
    "check_new_run_dir",
    "check_resumed_corpus",
    "NewRunDirGuard",
    "config_changes",
    "find_checkpoint",
    "gather_rng_states",
    "gather_train_state",
    "keep_newer_last",
    "load_initial_weights",
    "local_train_state",
    "merge_overrides",
    "prepare_resume",
    "rebuild_wandb_history",
    "rebuilds_wandb_history",
    "relocate_checkpoint_states",
    "resolve_num_devices",
    "restore_rng_states",
    "resume_run_dir",
]


