"""Shared pieces of the command-line apps: the Hydra entry points (:func:`hydra_app`), clean
error exits, UTF-8 output, backslash escapes in free text, devices, output files. The command
line as typed (free text and paths verbatim, every override checked): :mod:`charlm.cli.overrides`;
printed commands and paths: :mod:`charlm.shell`."""

from __future__ import annotations

import codecs
import functools
import re
import sys
from pathlib import Path
from typing import Any, Callable

from charlm.cli.overrides import fix_argv
from charlm.errors import CharLMError
from charlm.sweeps import is_multirun


def utf8_stdout() -> None:
    """Write UTF-8 to stdout/stderr whatever the locale (``LC_ALL=C`` included)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="strict")
        except (AttributeError, ValueError):
            pass


#: One backslash escape that Python string literals understand (the ``unicode_escape`` codec).
_ESCAPE = re.compile(r"""\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^{}]+\}|[0-7]{1,3}|[\\'"abfnrtv\n])""")


def decode_escapes(text: str, option: str = "prime") -> str:
    """Apply Python's backslash escapes (``\\n``, ``\\t``, ``\\\\``, ``\\xHH``, ``\\uHHHH``,
    ``\\UHHHHHHHH``, ``\\N{name}``, octal ``\\ooo``) in ``text``, leaving every other
    character, non-ASCII included (``é``, ``Привет``, ``😀``), exactly as given.

    Only the escapes are decoded (by the ``unicode_escape`` codec): encoding the whole text to
    UTF-8 and decoding it as ``unicode_escape`` garbles non-ASCII characters (``é`` -> ``Ã©``).

    Raises:
        CharLMError: on an invalid or unknown escape (``\\xZZ``, ``\\q``, a lone final
            backslash, an unknown ``\\N{name}``), naming it, its position and ``option``.
    """
    out: list[str] = []
    i = 0
    while (j := text.find("\\", i)) >= 0:
        out.append(text[i:j])
        m = _ESCAPE.match(text, j)
        try:
            if m is None:
                raise ValueError
            out.append(codecs.decode(m.group(0).encode("latin-1", "backslashreplace"), "unicode_escape"))
        except (ValueError, UnicodeDecodeError):
            kind = text[j + 1 : j + 2]
            end = text.find("}", j) + 1 if kind == "N" and "}" in text[j:] else j + {"x": 4, "u": 6, "U": 10}.get(kind, 2)
            raise CharLMError(
                f"{option}: invalid backslash escape '{text[j:end]}' at character {j}; with escapes=true write "
                "\\n, \\t, \\\\ (a backslash), \\xHH, \\uHHHH, \\UHHHHHHHH, \\N{name} or octal \\ooo, "
                "or set escapes=false to take the text as typed"
            ) from None
        i = m.end()
    out.append(text[i:])
    return "".join(out)


def pick_device(name: Any, option: str = "device"):
    """The ``torch.device`` for ``device=``: ``auto`` is CUDA when available, else the CPU;
    otherwise ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``.

    Raises:
        CharLMError: if ``name`` is not such a device (``gpu7``), or names a CUDA device this
            machine does not have (no CUDA, or an index beyond its GPUs), or MPS where it is not
            available.
    """
    import torch

    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise CharLMError(f"{option}={name} is not a device: use auto, cpu, cuda, cuda:<index> or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CharLMError(f"{option}={name} but CUDA is not available on this machine; use {option}=cpu or {option}=auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise CharLMError(f"{option}={name} but this machine has {n} CUDA device(s): cuda:0 to cuda:{n - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CharLMError(f"{option}={name} but MPS is not available on this machine; use {option}=cpu or {option}=auto")
    return dev


def write_output(cfg: Any, name: str, text: str) -> Path | None:
    """Write ``text`` (UTF-8) to ``<paths.output_dir>/<name>``, the app's run dir, creating it;
    returns the path, or ``None`` when the config has no output dir (plain Python use)."""
    if not cfg.paths.get("output_dir"):
        return None
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(text, encoding="utf-8")
    return out / name


def user_error(e: BaseException) -> CharLMError | None:
    """The :class:`CharLMError` that ``e`` is or wraps (Hydra's ``instantiate`` wraps an error of
    the target in ``InstantiationException("Error in call to target ...")``), else ``None``."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, CharLMError):
            return e
        if type(e).__name__ != "InstantiationException":
            return None
        seen.add(id(e))
        e = e.__cause__
    return None


def clean_errors(task):
    """Decorator for a Hydra task: a :class:`CharLMError` (also one wrapped by Hydra's
    ``instantiate``) prints ``error: <message>`` (no traceback), records the run as FAILED in its
    ``job_status.yaml`` and exits with status 2; in a multirun it is re-raised so Hydra records
    the job as failed and runs the next one."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as exc:
            e = user_error(exc)
            if e is None:
                raise
            if is_multirun():
                raise e from None
            print(f"error: {e}", file=sys.stderr, flush=True)
            _record_failure(e)
            sys.exit(2)

    return wrapper


def _record_failure(e: CharLMError) -> None:
    from hydra.core.hydra_config import HydraConfig

    from charlm.sweeps import is_recorded, write_job_status

    try:
        hc = HydraConfig.get()
    except ValueError:  # not run by Hydra (plain python use)
        return
    if is_recorded(str(hc.runtime.output_dir)):  # the app recorded how its run ended itself
        return
    write_job_status(Path(str(hc.runtime.output_dir)), "FAILED", list(hc.overrides.task), error=f"{type(e).__name__}: {e}")


def hydra_app(config_name: str, task: Callable[[Any], Any], setup: Callable[[], None] | None = None):
    """The two entry points of a Hydra app: ``(hydra_main, main)``.

    ``hydra_main`` is ``task`` under ``@hydra.main`` (config ``conf/<config_name>.yaml``) and
    :func:`clean_errors`; Hydra names the job after ``task``'s module (``charlm.cli.eval`` ->
    ``eval``: ``outputs/eval/...``, ``eval.log``). ``main``, the console script
    (``charlm-<config_name>``), writes UTF-8 (:func:`utf8_stdout`), prepares the command line
    (:func:`~charlm.cli.overrides.fix_argv`), runs ``setup`` and then ``hydra_main``.

    Example: ``hydra_main, main = hydra_app("eval", run)``.
    """
    import hydra

    from charlm.config import config_dir

    hydra_main = hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(clean_errors(task))

    def main() -> None:
        utf8_stdout()
        fix_argv(config_name)
        if setup is not None:
            setup()
        hydra_main()

    main.__doc__ = f"``charlm-{config_name}``: run the app with the command line's overrides."
    return hydra_main, main
