"""The run dir of a new training: never one that already holds a run.

:func:`check_new_run_dir` refuses it (called by :func:`charlm.cli.train.train`), and
:class:`NewRunDirGuard` does it as a Hydra callback before Hydra writes into the dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from charlm.errors import CharLMError

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
