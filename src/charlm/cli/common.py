"""Shared pieces of the command-line apps: clean error exits, UTF-8 output."""

from __future__ import annotations

import codecs
import functools
import re
import sys

from charlm.errors import CharLMError


def utf8_stdout() -> None:
    """Write UTF-8 to stdout/stderr whatever the locale (``LC_ALL=C`` included)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="strict")
        except (AttributeError, ValueError):
            pass


#: Characters that give an unquoted Hydra value a structure (list, dict, function call, sweep).
_STRUCTURE = set("[]{}()")


def quote_unicode_overrides(argv: list[str]) -> list[str]:
    """Quote ``key=value`` command-line overrides whose value has non-ASCII characters.

    Hydra's override grammar only accepts ASCII in unquoted values: ``prime=Привет`` fails with
    ``LexerNoViableAltException`` although ``prime='Привет'`` works. Such a value is wrapped in
    quotes here (``'`` or, if it holds a ``'``, ``"``) so it reaches the app as the string typed.
    Left as typed: values already quoted, values with ``[]{}()`` (lists, dicts, functions), values
    holding both quote characters, and, in a multirun (``-m``), values with ``,`` (a sweep).
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (
            not sep
            or key.startswith("-")
            or not value
            or value[0] in "'\""
            or all(ord(c) < 128 for c in value)
            or _STRUCTURE & set(value)
            or (multirun and "," in value)
            or ("'" in value and '"' in value)
        ):
            out.append(arg)
            continue
        q = "'" if "'" not in value else '"'
        stripped = value.rstrip("\\")
        value = stripped + "\\" * (2 * (len(value) - len(stripped)))  # a backslash before the closing quote is escaped
        out.append(f"{key}={q}{value}{q}")
    return out


def fix_argv() -> None:
    """Apply :func:`quote_unicode_overrides` to ``sys.argv`` (before Hydra parses it)."""
    sys.argv[1:] = quote_unicode_overrides(sys.argv[1:])


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
