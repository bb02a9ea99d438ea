"""``resume=<run dir or checkpoint>``: continuing a run exactly.

:func:`prepare_resume` finds ``last.ckpt`` (:func:`charlm.checkpoint.find_checkpoint`),
recomposes the run's config from the overrides stored in the checkpoint plus the new command line
(:mod:`charlm.training.run_config`), refuses hyper-parameter changes (unless
``allow_changes=true``), and points the run at the same run dir and W&B run id; a newer
``last.ckpt`` is kept aside (:func:`keep_newer_last`). :func:`check_resumed_corpus` compares the
corpus once it is prepared. Lightning then restores weights, optimizer, LR scheduler, loop
counters and the train loader's position; :class:`~charlm.training.module.CharLM` restores the
hidden state of every stream and the RNG states (:mod:`charlm.model.run_state`); the logs are
continued by :mod:`charlm.training.history`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.checkpoint import (
    MODEL_ENTRY,
    RUN_ENTRY,
    checkpoint_step,
    find_checkpoint,
    load_checkpoint,
    peek_checkpoint,
    saved_rng,
)
from charlm.data.vocab import vocab_difference
from charlm.errors import CharLMError
from charlm.training.history import rebuilds_wandb_history
from charlm.training.run_config import (
    TRANSIENT,
    compose_train_config,
    config_changes,
    current_overrides,
    describe_extension,
    merge_overrides,
    override_key,
    resolved_config,
    run_overrides,
)

log = logging.getLogger(__name__)


def split_change_note(changed: list[str]) -> str:
    """What a change of ``data.splits`` or ``data.shuffle_lines`` among ``changed`` (items of
    :func:`~charlm.training.run_config.config_changes`) does to a resumed run, as lines to add to
    its refusal or warning; ``""`` when there is none."""
    note = ""
    if any(c.startswith(("data.splits:", "data.shuffle_lines:")) for c in changed):
        note += ("\nThe split settings decide which lines are val and test: with new ones, val and test would hold "
                 "text the run has trained on, and their losses would not compare with the run's.")
    if any(c.startswith("data.shuffle_lines: '<unset>'") for c in changed):
        note += ("\nThis run began before data.shuffle_lines existed and was split in the file's line order; "
                 "to resume it as it was, add data.shuffle_lines=null.")
    return note


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
    run = ckpt.get(RUN_ENTRY)
    if not run:
        raise CharLMError(
            f"{ckpt_path} has no run information (not written by charlm-train with resume support); "
            f"continue from it with ckpt={ckpt_path} or start from its weights with init_from={ckpt_path}."
        )
    new_cli = current_overrides(cfg)
    overrides = merge_overrides(list(run["overrides"]), run_overrides(new_cli))
    new = compose_train_config(merge_overrides(overrides, [o for o in new_cli if override_key(o) in TRANSIENT]))
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
    new_resolved = resolved_config(new)
    # the processes that wrote the checkpoint, as Lightning counted them (format 2 on)
    old_world = (saved_rng(ckpt.get(MODEL_ENTRY) or {}) or {}).get("world_size")
    changed, extended = config_changes(old_resolved, new_resolved, old_world)
    step = int(ckpt.get("global_step", 0))
    note = split_change_note(changed)
    if changed and not new.get("allow_changes", False):
        raise CharLMError(
            f"resume={cfg.resume}: these settings differ from the run's ({ckpt_path}):\n  "
            + "\n  ".join(changed)
            + note
            + "\nResume with the run's own settings (drop these overrides), start a new run from its weights "
            f"with init_from={ckpt_path}, or pass allow_changes=true to continue with the new values "
            "(the optimizer and LR-scheduler states, learning rate included, are still restored from the checkpoint; "
            "everything else is used as configured)."
        )
    if changed:
        log.warning("resuming with changed settings (allow_changes=true):\n  %s%s", "\n  ".join(changed), note)
    if extended:
        log.info("resuming with a new run length: %s; %s", "; ".join(extended), describe_extension(old_resolved, new_resolved, step))
    if run_dir is not None:
        keep_newer_last(ckpt_path, run_dir, step)
    log.info("resuming %s from %s (step %d)", out_dir, ckpt_path, step)
    return new, ckpt_path, overrides


def check_resumed_corpus(ckpt_path: str | Path, corpus, allow_changes: bool = False, target: Any = None) -> None:
    """Refuse to resume onto a corpus whose content is not the one the checkpoint was trained on.

    Compares the corpus as prepared now (``corpus``: a
    :class:`~charlm.data.cache.PreparedCorpus`) with the checkpoint's ``charlm`` entry: its
    vocabulary (``vocab``) and the sha256 of the file's bytes (``data.sha256``). A checkpoint
    without a stored hash (older format) is only compared by vocabulary.

    Raises:
        CharLMError: if the vocabulary differs (always: the ids would mean other characters;
            the message lists the characters only in one of them), or the content differs with
            the same vocabulary and ``allow_changes`` is false (the message gives both hashes
            and lengths and the ways on).
    """
    entry = peek_checkpoint(ckpt_path).get(MODEL_ENTRY) or {}
    data = entry.get("data") or {}
    what = f"resume={target if target is not None else ckpt_path}"
    old_vocab, new_vocab = list(entry.get("vocab") or []), list(corpus.vocab.chars)
    if old_vocab and old_vocab != new_vocab:
        only_old, only_new = vocab_difference(old_vocab, new_vocab)
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


def warn_split_change(ckpt_path: str | Path, splits, shuffle_lines, option: str = "ckpt") -> bool:
    """Warn when a run that continues from a checkpoint (``ckpt=``) splits its corpus otherwise
    than the checkpoint's run did (``data.splits``, ``data.shuffle_lines``): its val and test then
    hold text the checkpoint has trained on. Returns whether it warned.

    Raises:
        CharLMError: if the checkpoint cannot be read, or is refused (:func:`~charlm.checkpoint.load_checkpoint`).
    """
    data = (load_checkpoint(ckpt_path).get(MODEL_ENTRY) or {}).get("data") or {}  # checked: clean errors
    old = (list(data.get("splits") or []), data.get("shuffle_lines"))
    new = (list(splits), shuffle_lines)
    if not old[0] or old == new:
        return False
    log.warning(
        "%s=%s was trained on other splits (data.splits=%s, data.shuffle_lines=%s) than this run's "
        "(data.splits=%s, data.shuffle_lines=%s): val and test now hold text the checkpoint has trained on, "
        "so their losses are lower than the model's on unseen text",
        option, ckpt_path, old[0], old[1], new[0], new[1],
    )
    return True


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

