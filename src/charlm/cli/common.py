"""Shared pieces of the command-line apps: clean error exits, UTF-8 output."""

from __future__ import annotations

import functools
import sys

from charlm.errors import CharLMError


def utf8_stdout() -> None:
    """Write UTF-8 to stdout/stderr whatever the locale (``LC_ALL=C`` included)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="strict")
        except (AttributeError, ValueError):
            pass


def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def clean_errors(task):
    """Decorator for a Hydra task: a :class:`CharLMError` prints its message (no traceback)
    and exits with status 2; in a multirun it is re-raised so Hydra records the job as failed."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except CharLMError as e:
            if is_multirun():
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
