"""A run's config across invocations: the overrides that define it, the config they compose,
and what ``resume=`` may change in it.

- :func:`current_overrides`, :func:`run_overrides`, :func:`merge_overrides`: the command line's
  Hydra overrides, the ones that define the run (stored in its checkpoints), and their merging
  (a later value of a key replacing an earlier one).
- :func:`compose_train_config`: the ``train`` config of a list of overrides.
- :func:`config_changes`, :func:`describe_extension`: the changes between the run's resolved
  config and the resumed one, the refused (:data:`PROTECTED`) and the allowed
  (:data:`EXTENDABLE`, a longer or shorter run).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from charlm.training.devices import global_streams

#: Keys whose change on resume alters the training (refused unless ``allow_changes=true``).
PROTECTED = ("seed", "nonfinite", "data", "model", "optimizer", "scheduler")
PROTECTED_TRAINER = ("precision", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "limit_train_batches")
#: Keys that may change on resume: they make the run longer or shorter.
EXTENDABLE = ("trainer.max_steps", "trainer.max_epochs", "trainer.max_time")
#: Keys under ``data`` that do not change what is trained on (locations, eval layout); the
#: per-device ``batch_size`` is compared as the global number of streams instead.
DATA_FREE = ("data.data_dir", "data.cache_dir", "data.eval_batch_size", "data.eval_burn_in", "data.batch_size")
#: Command-line keys that belong to one invocation, never stored as the run's overrides.
TRANSIENT = ("resume", "stop_after_steps", "allow_changes", "init_from", "ckpt", "ckpt_path")


def override_key(o: str) -> str:
    """The key an override sets (``+a.b=1``, ``~a.b`` and ``a.b=1`` all set ``a.b``)."""
    key = o.split("=", 1)[0]
    return key.lstrip("+~")


def merge_overrides(*lists: list[str]) -> list[str]:
    """Concatenate Hydra override lists, a later value of a key replacing an earlier one
    (Hydra refuses two values for one key)."""
    out: dict[str, str] = {}
    for lst in lists:
        for o in lst:
            k = override_key(o)
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
    return [o for o in overrides if override_key(o) not in TRANSIENT and not override_key(o).startswith("hydra.")]


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The ``train`` config that ``overrides`` compose (in the Hydra context in force, else in
    charlm's ``conf/``)."""
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


def _added_default(key: str, value) -> bool:
    """Whether ``key`` is an option added after a run began, set to its default (which is what
    that run trained with): the AWD-LSTM regularisers, off (0) by default, and
    ``data.shuffle_lines``, the file's line order (``None``) by default."""
    from charlm.model.rnn import REGULARISERS

    added = {"data.shuffle_lines": None, **{f"model.{name}": 0.0 for name in REGULARISERS}}
    return key in added and value == added[key]


def config_changes(old: dict, new: dict, old_world_size: int | None = None) -> tuple[list[str], list[str]]:
    """``(protected changes, extensions)`` between two resolved configs, as ``"key: a -> b"``.

    The per-device ``data.batch_size`` is compared as the global number of streams
    (:func:`~charlm.training.devices.global_streams`): the new config's devices as Lightning
    resolves them here, the old run's processes as its checkpoint records them
    (``old_world_size``; resolved from ``old`` when not given).

    Raises:
        CharLMError: if Lightning refuses a device choice that has to be resolved.
    """
    flat_old, flat_new = _flatten(old), _flatten(new)
    changed, extended = [], []
    for k in sorted(set(flat_old) | set(flat_new)):
        a, b = flat_old.get(k, "<unset>"), flat_new.get(k, "<unset>")
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
    streams_old, streams_new = global_streams(old, old_world_size), global_streams(new)
    if streams_old != streams_new:
        changed.append(
            f"global streams (data.batch_size x devices x nodes): {streams_old} -> {streams_new} "
            "(to resume on another number of devices keep the product: e.g. 2 devices x 4 -> 1 device x 8)"
        )
    return changed, extended


def _lr_factor(sched_cfg: dict | None, total: int, step: int) -> float | None:
    """The schedule's LR multiplier at ``step`` for a run of ``total`` steps (step-interval
    ``LambdaLR`` schedules only; ``None`` otherwise)."""
    if not sched_cfg:
        return None
    from hydra.utils import instantiate

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        sched = instantiate(sched_cfg)(optimizer, total_steps=total)
    except Exception:  # pragma: no cover - a schedule we cannot evaluate offline
        return None
    if not sched or sched.get("interval") != "step" or not hasattr(sched["scheduler"], "lr_lambdas"):
        return None
    return float(sched["scheduler"].lr_lambdas[0](step))


def describe_extension(old: dict, new: dict, step: int) -> str:
    """What extending the run does to the learning-rate schedule (for the log)."""
    steps_old, steps_new = old["trainer"].get("max_steps", -1), new["trainer"].get("max_steps", -1)
    msg = (
        "the LR schedule is rebuilt for the new length (Trainer.estimated_stepping_batches); "
        "the optimizer and scheduler step counts continue from the checkpoint."
    )
    if isinstance(steps_old, int) and isinstance(steps_new, int) and steps_old > 0 and steps_new > 0 and steps_old != steps_new:
        factor_old = _lr_factor(new.get("scheduler"), steps_old, step)
        factor_new = _lr_factor(new.get("scheduler"), steps_new, step)
        lr = (new.get("optimizer") or {}).get("lr")
        if factor_old is not None and factor_new is not None and lr is not None:
            msg += (
                f" The schedule now spans {steps_new} steps instead of {steps_old}: at step {step} the learning rate "
                f"goes from {lr * factor_old:.3g} to {lr * factor_new:.3g} and follows the new curve from there."
            )
        else:
            msg += f" It now spans {steps_new} steps instead of {steps_old}."
    return msg


def resolved_config(cfg: DictConfig) -> dict:
    """``cfg`` as plain containers, interpolations resolved, without its ``hydra`` node: the
    config a checkpoint stores (:class:`~charlm.checkpoint.RunInfo`) and ``resume=`` compares."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    c.pop("hydra", None)
    return c
