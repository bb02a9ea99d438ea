"""The training state a checkpoint carries besides the weights: the hidden state of every stream
and the RNG states, gathered from every rank when saving and handed back to each rank when resuming.

A checkpoint stores the hidden state globally (``[num_layers, G, hidden_size]``, ``G`` = every
rank's streams, rank 0's first) and one RNG state per rank, so a run resumes exactly on the
same number of devices and continues (the same streams re-divided) on another number.
Used by :class:`~charlm.training.module.CharLM`'s checkpoint hooks; the entry that holds them is
:func:`charlm.checkpoint.model_entry`.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import torch

from charlm.errors import CharLMError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- hidden state across ranks
def gather_hidden(module: L.LightningModule, hidden) -> list[torch.Tensor] | None:
    """Every rank's hidden state ``[num_layers, B, H]`` -> the global ``[num_layers, W*B, H]``
    (CPU tensors, streams in global order: rank 0's first). A collective under DDP: every rank
    calls it (Lightning dumps checkpoints on every rank; rank 0 writes)."""
    if hidden is None:
        return None
    trainer = module._trainer
    world = trainer.world_size if trainer is not None else 1
    if world == 1:
        return [s.detach().cpu().clone() for s in hidden]
    out = []
    for s in hidden:
        g = module.all_gather(s.detach())  # [W, L, B, H]
        w, layers, b, h = g.shape
        out.append(g.permute(1, 0, 2, 3).reshape(layers, w * b, h).cpu())
    return out


def local_hidden(module: L.LightningModule, hidden: list[torch.Tensor] | None):
    """This rank's streams of a global hidden state ``[num_layers, G, H]`` -> ``[num_layers, B, H]``.

    Raises:
        CharLMError: if ``G`` does not divide into the ranks.
    """
    if hidden is None:
        return None
    trainer = module.trainer
    world, rank = trainer.world_size, trainer.global_rank
    g = int(hidden[0].shape[1])
    if g % world:
        raise CharLMError(f"the checkpoint holds {g} streams, which do not divide into {world} devices")
    b = g // world
    return tuple(s[:, rank * b:(rank + 1) * b].to(module.device).contiguous() for s in hidden)


# ---------------------------------------------------------------------- RNG states across ranks
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
