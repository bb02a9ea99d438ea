"""Where the Hydra configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from charlm.errors import CharLMError

_PKG = Path(__file__).resolve().parent


def config_dir() -> str:
    """Absolute path of the ``conf/`` folder: the repository's (editable install) or the copy
    packaged inside ``charlm/conf`` (wheel install)."""
    for candidate in (_PKG.parent.parent / "conf", _PKG / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"charlm's conf/ folder was not found next to {_PKG}")


def _wandb_offline() -> bool:
    """W&B is offline unless ``WANDB_MODE=online`` (or ``logger.wandb.offline=false``)."""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def resume_run_dir(target, default: str) -> str:
    """OmegaConf resolver ``charlm.run_dir``: the run dir of ``resume=<target>`` (so Hydra writes
    into the run being resumed instead of a new folder), else ``default``. Never raises: a bad
    target is reported by :func:`charlm.training.resume.prepare_resume`."""
    if target in (None, "", "None", "null"):
        return default
    from charlm.checkpoint import find_checkpoint  # torch and Lightning: only for a resume=

    try:
        _, run_dir = find_checkpoint(target)
    except CharLMError:
        return default
    return str(run_dir) if run_dir is not None else default


def app_options(name: str) -> str:
    """The options of app config ``conf/<name>.yaml`` as that file lists them, each with its
    comment, for the app's ``--help`` (``${charlm.app_options:sample}`` in its help template):
    the top-level lines after the ``defaults`` list, up to a ``hydra:`` block, without
    ``task_name``. ``$`` is doubled for the help template."""
    lines = (Path(config_dir()) / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    state = "header"
    for line in lines:
        if state == "header":
            state = "defaults" if line.startswith("defaults:") else "header"
        elif state == "defaults":
            if not line.startswith((" ", "\t", "-")) and line.strip():
                state = "options"
        if state != "options":
            continue
        if line.startswith("hydra:"):
            break
        if not line.startswith("task_name:"):
            out.append(line)
    return "\n".join(out).strip("\n").replace("$", "$$")


def job_dirname(num, overrides="", max_len: int = 120) -> str:
    """The sub-folder name of multirun job ``num``: ``<num>_<overrides>`` (Hydra's
    ``override_dirname``), with ``/`` replaced by ``_`` and cut to ``max_len`` characters
    (a cut name ends in ``~`` and 8 hex digits of the overrides' SHA-1), so that many overrides
    never exceed the file system's 255-byte name limit. The job number keeps names unique
    within a sweep; the sweep folder itself is stamped to the microsecond.

    Used as ``${charlm.job_dirname:${hydra.job.num},${hydra.job.override_dirname}}``."""
    import hashlib

    text = str(overrides or "").replace("/", "_").replace("\\", "_")
    name = f"{num}_{text}" if text else str(num)
    if len(name) > max_len:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        name = f"{name[: max_len - 9]}~{digest}"
    return name


def register_resolvers() -> None:
    """Register ``${charlm.wandb_offline:}``, ``${charlm.run_dir:<resume>,<default>}``,
    ``${charlm.job_dirname:num,overrides}`` and ``${charlm.app_options:<app>}`` (idempotent)."""
    if not OmegaConf.has_resolver("charlm.wandb_offline"):
        OmegaConf.register_new_resolver("charlm.wandb_offline", _wandb_offline)
    if not OmegaConf.has_resolver("charlm.run_dir"):
        OmegaConf.register_new_resolver("charlm.run_dir", resume_run_dir)
    if not OmegaConf.has_resolver("charlm.app_options"):
        OmegaConf.register_new_resolver("charlm.app_options", app_options)
    if not OmegaConf.has_resolver("charlm.job_dirname"):
        OmegaConf.register_new_resolver("charlm.job_dirname", job_dirname)


register_resolvers()
