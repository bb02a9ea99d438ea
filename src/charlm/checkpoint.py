"""The checkpoint: its format, and every write, search and read of one.

A checkpoint is Lightning's dict (``state_dict`` with the :class:`~charlm.training.module.CharLM`
weights under ``net.``, ``optimizer_states``, ``lr_schedulers``, ``loops``, ``callbacks``,
``global_step``, ...) plus two entries of charlm's own, both plain types and tensors so that the
file loads with ``torch.load(weights_only=True)``:

- ``"charlm"`` (:data:`MODEL_ENTRY`, written by :func:`model_entry` from the module's
  ``on_save_checkpoint``): ``format`` (:data:`CHECKPOINT_FORMAT`), ``vocab`` (the sorted
  characters), ``model`` (:class:`~charlm.model.rnn.CharRNN` arguments), ``data`` (the corpus
  description and its sha256), ``train_state`` (the hidden state of every stream, see
  :mod:`charlm.model.run_state`) and ``rng`` (every rank's RNG states). Enough to sample.
- ``"charlm_run"`` (:data:`RUN_ENTRY`, written by :class:`RunInfo`): the resolved config, the
  overrides that compose it and the W&B run id. Enough, with the rest, to ``resume=``.

Writing: :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes each
checkpoint to a temporary file in the same folder, flushes it to disk (``fsync``) and renames it
over the target, so a process killed mid-write leaves the previous ``last.ckpt`` intact and
loadable. Finding: :func:`find_checkpoint` (a run dir, a ``checkpoints`` folder or a file; one
search order, :func:`find_last`). Reading: :func:`load_checkpoint` reads a checkpoint with
``torch.load(weights_only=True)``: a crafted file whose pickle would run code is refused, and a
truncated or foreign file is a clear :class:`~charlm.errors.CharLMError` naming the file;
:func:`model_from_checkpoint` (sampling, evaluation) and :func:`load_initial_weights`
(``init_from=``) take the network weights from it.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from charlm.data.vocab import Vocab, vocab_difference
from charlm.errors import CharLMError
from charlm.files import new_temp_file
from charlm.model.rnn import CharRNN

log = logging.getLogger(__name__)

#: The checkpoint entry with what sampling and exact resumption need (:func:`model_entry`).
MODEL_ENTRY = "charlm"
#: The checkpoint entry with what ``resume=`` needs besides it (:class:`RunInfo`).
RUN_ENTRY = "charlm_run"
#: Bump when the layout of the :data:`MODEL_ENTRY` entry changes.
CHECKPOINT_FORMAT = 2  # 2: the hidden state is global (all ranks), rng per rank
#: The key of the hidden state in :data:`MODEL_ENTRY` (its name on disk since format 1).
HIDDEN_KEY = "train_state"
#: The prefix of the network's weights in the LightningModule's ``state_dict``.
NET_PREFIX = "net."


# ---------------------------------------------------------------------- the format
def model_entry(vocab: list[str], model: dict[str, Any], data: dict[str, Any],
                hidden: list[torch.Tensor] | None, rng: dict[str, Any]) -> dict[str, Any]:
    """The :data:`MODEL_ENTRY` entry of a checkpoint.

    Args:
        vocab: the sorted vocabulary characters.
        model: the network's constructor arguments (``CharRNN.config()``).
        data: the plain-typed description of the training data.
        hidden: the hidden state of every stream of every rank: CPU tensors
            ``[num_layers, G, hidden_size]`` (``h``, and ``c`` for an LSTM), streams in global
            order (:func:`charlm.model.run_state.gather_hidden`); ``None`` before the first step.
        rng: every rank's RNG states (:func:`charlm.model.run_state.gather_rng_states`).
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "vocab": vocab,
        "model": model,
        "data": data,
        HIDDEN_KEY: hidden,
        "rng": rng,
    }


def saved_hidden(entry: dict[str, Any]) -> list[torch.Tensor] | None:
    """The global hidden state stored in a :data:`MODEL_ENTRY` entry (``None`` if none)."""
    return entry.get(HIDDEN_KEY)


def saved_rng(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The RNG states stored in a :data:`MODEL_ENTRY` entry (``None`` if none)."""
    return entry.get("rng")


def run_entry(config: dict, overrides: list[str], wandb_id: str | None) -> dict[str, Any]:
    """The :data:`RUN_ENTRY` entry: the resolved config, its overrides and the W&B run id."""
    return {"config": config, "overrides": overrides, "wandb_id": wandb_id}


# ---------------------------------------------------------------------- writing
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically: temporary file ``.<name>.<random>.tmp`` in the
    same folder, ``fsync``, ``os.replace``. A process killed before the rename leaves ``path``
    as it was (a stale ``.tmp`` file may remain and can be deleted). The file gets the mode the
    umask gives any new file (``0644`` with the usual umask 022), as ``torch.save`` would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)  # serialise fully before touching the disk
    fd, tmp = new_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose writes are atomic (see :func:`atomic_torch_save`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


# ---------------------------------------------------------------------- finding
def find_last(folder: str | os.PathLike) -> Path | None:
    """The ``last.ckpt`` of ``folder``: ``<folder>/checkpoints/last.ckpt`` (a run dir), else
    ``<folder>/last.ckpt`` (a ``checkpoints`` folder); ``None`` when it has neither."""
    folder = Path(folder)
    for candidate in (folder / "checkpoints" / "last.ckpt", folder / "last.ckpt"):
        if candidate.is_file():
            return candidate
    return None


def find_checkpoint(target: str | Path, option: str = "resume") -> tuple[Path, Path | None]:
    """``(checkpoint file, run dir)`` for ``<option>=<target>`` (``resume=`` or ``ckpt=``).

    ``target`` is a run dir (its ``checkpoints/last.ckpt`` is used), a ``checkpoints`` folder,
    or a ``.ckpt`` file (:func:`find_last`). The run dir is the folder above ``checkpoints/``
    (``None`` when the checkpoint does not sit in a run dir's ``checkpoints/`` folder).

    Raises:
        CharLMError: if no checkpoint is found (a resume never silently starts from scratch),
            naming ``option`` as the user gave it.
    """
    undo = "to start a new run drop resume=" if option == "resume" else f"give an existing .ckpt file or drop {option}="
    p = Path(str(target)).expanduser()
    if p.is_dir():
        found = find_last(p)
        if found is None:
            raise CharLMError(
                f"{option}={target}: no checkpoint found (looked for checkpoints/last.ckpt and last.ckpt under it). "
                f"Give a run dir that has written a checkpoint, or a .ckpt file; {undo}."
            )
        p = found
    elif not p.is_file():
        raise CharLMError(f"{option}={target}: no such run dir or checkpoint file; {undo}.")
    p = p.resolve()
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
    return p, run_dir


# ---------------------------------------------------------------------- reading
def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a charlm checkpoint safely (``weights_only=True``), onto ``map_location`` (CPU by
    default, so a checkpoint saved on a GPU loads on a CPU-only machine).

    Raises:
        CharLMError: if the file is missing, truncated, not a checkpoint, carries code in its
            pickle (refused, never executed), or is not a charlm checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = find_last(path)
        if candidate is None:
            raise CharLMError(f"{path} is a folder without a checkpoint (looked for last.ckpt under it); give a .ckpt file.")
        path = candidate
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise CharLMError(f"checkpoint {path} {what}; give the path of a .ckpt file (e.g. <run dir>/checkpoints/last.ckpt).")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..), torch < 1.6 a bare pickle (protocol opcode 0x80)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CharLMError(
            f"{path} is not a checkpoint file ({'it is empty' if not head else 'neither a zip archive nor a pickle'}); "
            "give a .ckpt file written by charlm-train (e.g. <run dir>/checkpoints/last.ckpt)."
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not _is_refusal(str(e)):  # a damaged pickle, not a refused one
            raise CharLMError(f"{path} is not a readable checkpoint (truncated or damaged: {_reason(e)}).") from None
        raise CharLMError(
            f"refused to load {path}: it is not a plain checkpoint (its pickle asks for code or objects "
            f"that a weights-only load does not allow: {_reason(e)}). Only load checkpoints you trust."
        ) from None
    except Exception as e:  # torch.load fails in many ways on a damaged or foreign file (RuntimeError, EOFError, IndexError, ...)
        raise CharLMError(
            f"{path} is not a readable checkpoint (truncated or not a checkpoint file: {type(e).__name__}: {_reason(e)}). "
            "Use another checkpoint (the run's best-k ones, or an earlier last.ckpt)."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CharLMError(f"{path} is not a Lightning checkpoint (no state_dict).")
    if MODEL_ENTRY not in ckpt:
        raise CharLMError(f"{path} is not a charlm checkpoint (no 'charlm' entry with the vocabulary and model config).")
    return ckpt


def _is_refusal(message: str) -> bool:
    """Whether torch's weights-only unpickler refused an object (a GLOBAL, i.e. code or a class it
    does not allow) rather than failing on a damaged stream ("Unsupported operand", truncation)."""
    m = message.lower()
    return "weights only load failed" in m and ("global" in m or "allowlisted" in m or "unsupported class" in m)


#: Lines of torch's weights-only message that explain torch, not this file.
_BOILERPLATE = ("weights only load failed", "please file an issue", "check the documentation")


def _reason(e: BaseException, limit: int = 200) -> str:
    """The informative part of a torch.load error, short: its first line that is not torch's
    general advice, cut after a whole sentence when longer than ``limit`` characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln.split("WeightsUnpickler error:", 1)[-1].strip() or ln for ln in lines]
    useful = [ln for ln in lines if not ln.lower().startswith(_BOILERPLATE) and not ln.startswith(("(1)", "(2)"))]
    useful = [ln for ln in useful if "GLOBAL" in ln] or useful  # the refused object, when there is one
    line = (useful or lines or [type(e).__name__])[0]
    if len(line) > limit:
        cut = line.rfind(". ", 0, limit)
        line = line[: cut + 1] if cut > 0 else line[:limit].rsplit(" ", 1)[0] + " ..."
    return line.rstrip(".")  # it is embedded in a sentence


def peek_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file's dict, memory-mapped (tensors are read only when used), weights only;
    for the step, the charlm entry or callback states of a checkpoint already checked by
    :func:`load_checkpoint` or written by this run."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` (optimizer steps done) of a checkpoint file (memory-mapped read)."""
    return int(peek_checkpoint(path).get("global_step", 0))


def net_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights of a checkpoint: its ``state_dict`` entries under ``net.``
    (:data:`NET_PREFIX`), without the prefix, as :class:`~charlm.model.rnn.CharRNN` names them."""
    return {k[len(NET_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}


def model_from_checkpoint(ckpt: dict[str, Any]):
    """Rebuild the :class:`~charlm.model.rnn.CharRNN` and :class:`~charlm.data.vocab.Vocab` of a
    checkpoint loaded by :func:`load_checkpoint`. Returns ``(net, vocab)`` with ``net`` in eval mode."""
    entry = ckpt[MODEL_ENTRY]
    net = CharRNN(**entry["model"])
    net.load_state_dict(net_state_dict(ckpt))
    net.eval()
    return net, Vocab(entry["vocab"])


def load_initial_weights(module, path: str | Path) -> Path:
    """``init_from=<checkpoint>``: copy a checkpoint's network weights into ``module`` (a
    :class:`~charlm.training.module.CharLM`; a new run with its own optimizer and schedule).

    Raises:
        CharLMError: if the vocabularies differ (the message lists the characters only in one of
            them; ids are never re-mapped) or the network shapes differ.
    """
    p = Path(str(path)).expanduser()
    ckpt = load_checkpoint(p)
    entry = ckpt[MODEL_ENTRY]
    old_vocab, new_vocab = list(entry["vocab"]), list(module.vocab)
    if old_vocab != new_vocab:
        only_old, only_new = vocab_difference(old_vocab, new_vocab)
        raise CharLMError(
            f"init_from={path}: the corpus's vocabulary differs from the checkpoint's "
            f"({len(new_vocab)} vs {len(old_vocab)} characters); only in the checkpoint: {only_old!r}; "
            f"only in this corpus: {only_new!r}"
            + ("; same characters in another order" if not only_old and not only_new else "")
            + ". init_from needs exactly the checkpoint's vocabulary (characters are never re-mapped): "
            "use a corpus with the same characters."
        )
    try:
        module.net.load_state_dict(net_state_dict(ckpt))
    except RuntimeError as e:
        raise CharLMError(
            f"init_from={path}: the checkpoint's network {entry['model']} does not fit this model "
            f"{module.net.config()}: {str(e).splitlines()[0]}. Use the checkpoint's model settings."
        ) from None
    log.info("initialised the weights from %s (new optimizer and schedule)", p)
    return p


# ---------------------------------------------------------------------- the run entry
class RunInfo(L.Callback):
    """Stores ``{"config", "overrides", "wandb_id"}`` in every checkpoint as
    ``checkpoint["charlm_run"]`` (:func:`run_entry`): the resolved config, the Hydra overrides
    that compose it and the W&B run id, which is all ``resume=`` needs besides the checkpoint.
    On loading, points the checkpoint callbacks' saved paths at the run dir as it is now
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
        checkpoint[RUN_ENTRY] = run_entry(self.config, self.overrides, wandb_id)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # runs before any callback's load_state_dict: the checkpoint callbacks then load paths
        # of the run dir as it is now (moved or copied run dirs resume exactly)
        relocate_checkpoint_states(trainer, checkpoint)


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
