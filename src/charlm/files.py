"""Temporary files and folders for atomic writes, created with the permissions the user's umask
gives any new file (``tempfile.mkstemp``/``mkdtemp`` always create them ``0600``/``0700``, and a
file renamed into place keeps that mode: a checkpoint or a cache entry others could not read).

Used by :func:`charlm.checkpoint.atomic_torch_save`, the corpus cache (:mod:`charlm.data.cache`)
and the corpus download (:mod:`charlm.data.corpus`); imports neither torch nor Lightning.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def new_temp_file(folder: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new, empty file ``<folder>/<prefix><random><suffix>`` opened for writing.

    Like :func:`tempfile.mkstemp` (exclusive creation, never follows an existing name), but the
    file gets mode ``0o666 & ~umask`` as ``open(path, "w")`` would give it.

    Returns:
        ``(file descriptor, path)``; the caller closes the descriptor and removes or renames the file.

    Raises:
        OSError: if the folder is missing or not writable.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        path = os.path.join(os.fspath(folder), f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:  # pragma: no cover - 48 random bits: practically never
            continue


def new_temp_dir(folder: str | os.PathLike, prefix: str) -> Path:
    """Create a new, empty folder ``<folder>/<prefix><random>`` with mode ``0o777 & ~umask``
    (as ``mkdir`` gives it; :func:`tempfile.mkdtemp` would make it ``0700``).

    Raises:
        OSError: if ``folder`` is missing or not writable.
    """
    while True:
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:  # pragma: no cover
            continue
