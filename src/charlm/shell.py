"""Printed commands and paths: a command line that runs as printed when pasted into a shell
(:func:`command`, :func:`shell_arg`) and a path as charlm prints it (:func:`shown_path`).
Used by the command-line apps and by what they run (training stops, sweeps, visualisation)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any


#: Shell characters that are safe inside double quotes.
_SHELL_SAFE_IN_DOUBLE = re.compile(r'[^"$`\\!]*')


def shell_arg(arg: str) -> str:
    """``arg`` quoted for a POSIX shell, readably: as is when safe (``ckpt=runs/0_a=1,b=2/last.ckpt``),
    in double quotes when that suffices (``"prime='It\\'s'"`` ...), else :func:`shlex.quote`."""
    if arg and re.fullmatch(r"[\w@%+=:,./~-]+", arg) and not arg.startswith("~"):
        return arg
    if _SHELL_SAFE_IN_DOUBLE.fullmatch(arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def command(app: str, *args: str, **options: Any) -> str:
    """A command line that runs as printed when pasted into a shell: ``app`` then ``args`` and
    ``key=value`` for each option, each quoted for the shell (:func:`shell_arg`); charlm's own
    quoting (:func:`~charlm.cli.overrides.quote_overrides`) takes free text and paths from there verbatim.
    Example: ``command("charlm-sample", ckpt=path)``."""
    parts = [app, *(shell_arg(a) for a in args)]
    parts += [shell_arg(f"{k}={v}") for k, v in options.items()]
    return " ".join(parts)


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as charlm prints it: relative to the current directory when it lies under it
    (``outputs/train/runs/...``, as the README shows it), else absolute. Symbolic links are not
    resolved, so a path the user typed stays recognisable."""
    p = Path(os.path.abspath(path))
    try:
        return str(p.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(p)
