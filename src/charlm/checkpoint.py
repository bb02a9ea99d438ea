"""Reading and writing checkpoints safely.

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes each checkpoint to a
  temporary file in the same folder, flushes it to disk (``fsync``) and renames it over the
  target, so a process killed mid-write leaves the previous ``last.ckpt`` intact and loadable.
- :func:`load_checkpoint` reads a checkpoint with ``torch.load(weights_only=True)``: a crafted
  file whose pickle would run code is refused, and a truncated or foreign file is a clear
  :class:`~charlm.errors.CharLMError` naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from charlm.errors import CharLMError
from charlm.files import new_temp_file


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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a charlm checkpoint safely (``weights_only=True``), onto ``map_location`` (CPU by
    default, so a checkpoint saved on a GPU loads on a CPU-only machine).

    Raises:
        CharLMError: if the file is missing, truncated, not a checkpoint, carries code in its
            pickle (refused, never executed), or is not a charlm checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = _find_last(path)
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
    if "charlm" not in ckpt:
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


def _find_last(folder: Path) -> Path | None:
    for candidate in (folder / "last.ckpt", folder / "checkpoints" / "last.ckpt"):
        if candidate.is_file():
            return candidate
    return None


def model_from_checkpoint(ckpt: dict[str, Any]):
    """Rebuild the :class:`~charlm.model.rnn.CharRNN` and :class:`~charlm.data.vocab.Vocab` of a
    checkpoint loaded by :func:`load_checkpoint`. Returns ``(net, vocab)`` with ``net`` in eval mode."""
    from charlm.data.vocab import Vocab
    from charlm.model.rnn import CharRNN

    entry = ckpt["charlm"]
    net = CharRNN(**entry["model"])
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    net.eval()
    return net, Vocab(entry["vocab"])
