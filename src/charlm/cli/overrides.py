"""The command line as typed, made ready for Hydra: arguments that a non-UTF-8 locale escaped are
decoded (:func:`decode_argv`); free text and paths are quoted so that Hydra reads them verbatim
(:func:`quote_overrides`, :func:`hydra_quote`); and every override is checked before Hydra reads
it, so that a mistake is one ``error:`` line naming the argument (:func:`check_overrides`).
:func:`fix_argv` does all three for an app's console script (:func:`charlm.cli.common.hydra_app`)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from charlm.errors import CharLMError
from charlm.shell import shell_arg

#: Options whose value is free text: the shell's argument is taken verbatim (``${`` included).
TEXT_KEYS = frozenset({"prime", "text", "callbacks.samples.prime", "logger.wandb.name", "logger.wandb.group"})
#: Options whose value is a path: taken verbatim, except that a ``${...}`` interpolation still resolves.
PATH_KEYS = frozenset({
    "ckpt", "resume", "init_from", "ckpt_path", "file", "prime_file", "out", "samples",
    "data.path", "data.data_dir", "data.cache_dir",
    "paths.root_dir", "paths.data_dir", "paths.cache_dir", "paths.log_dir", "paths.output_dir",
    "hydra.run.dir", "hydra.sweep.dir",
})
#: Hydra flags followed by a value of their own (a path, a config name, ``job``), not an override.
_FLAGS_WITH_VALUE = frozenset({"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun",
                               "-c", "--cfg", "-p", "--package"})
#: ``--info`` takes one of these, optionally.
_INFO_VALUES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})
#: Flags after which charlm does not compose the config itself (help, info, another config).
_FLAGS_NO_PRECHECK = frozenset({"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--info", "-i",
                                "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
                                "--experimental-rerun", "-sc", "--shell-completion"})
_MULTIRUN_FLAGS = ("-m", "--multirun")


def _overrides_mask(argv: list[str]) -> list[bool]:
    """For each argument, whether it is an override (``key=value``, ``~key``) rather than a Hydra
    flag or a flag's value (``--cfg job``, ``-cn train``, ``--info defaults``)."""
    mask, pending = [], None
    for arg in argv:
        if pending is not None and (pending not in ("-i", "--info") or arg in _INFO_VALUES):
            mask.append(False)
            pending = None
            continue
        pending = arg if arg in _FLAGS_WITH_VALUE or arg in ("-i", "--info") else None
        mask.append(not arg.startswith("-"))
    return mask


_PARSER = None


def _parser():
    """Hydra's override parser (built once)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    global _PARSER
    if _PARSER is None:
        _PARSER = OverridesParser.create()
    return _PARSER


def _parse(override: str):
    """Hydra's parse of one ``key=value`` override (``None`` if its grammar rejects it)."""
    from hydra.errors import HydraException

    try:
        return _parser().parse_override(override)
    except HydraException:
        return None


def hydra_quote(value: str, interpolate: bool = False) -> str:
    """``value`` as a single-quoted Hydra string that Hydra and OmegaConf read back as exactly
    ``value``: ``'`` and the backslashes before it or at the end are escaped for Hydra's quoted
    strings, and (unless ``interpolate``) every ``${`` is escaped for OmegaConf so that it is not
    an interpolation. Example: ``It's`` -> ``'It\\'s'``."""
    if not interpolate:
        value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return f"'{value}'"


#: One complete Hydra quoted string (the QUOTED_VALUE token of Hydra's grammar).
_QUOTED = re.compile(r"""'(?:(?:\\\\)*|.*?[^\\](?:\\\\)*)'|"(?:(?:\\\\)*|.*?[^\\](?:\\\\)*)\"""", re.S)


def _hand_quoted(value: str) -> bool:
    """Whether ``value`` is one whole Hydra quoted string, as quoting by hand (README) gives."""
    m = _QUOTED.match(value)
    return m is not None and m.end() == len(value)


def _verbatim(key: str, value: str, text: bool) -> str:
    """The Hydra value that reads back as ``value`` itself (quoted only when needed)."""
    if value == "null" or _hand_quoted(value):
        return value
    o = _parse(f"{key}={value}")
    if o is not None and not o.is_sweep_override() and o.value() == value and isinstance(o.value(), str) and (
        not text or "${" not in value
    ):
        return value
    return hydra_quote(value, interpolate=not text)


def quote_overrides(argv: list[str]) -> list[str]:
    """Rewrite command-line overrides so that Hydra reads free text and paths as typed.

    * The options that hold free text (:data:`TEXT_KEYS`: ``prime``, ``text``, ...) or a path
      (:data:`PATH_KEYS`: ``ckpt``, ``resume``, ``data.path``, ``hydra.run.dir``, ...) take the
      shell's argument verbatim: a value Hydra would not read back as itself (``,`` ``'``
      ``"`` ``( ) [ ] { }`` ``=`` ``#`` ``:`` spaces, non-ASCII, a number) is quoted with
      :func:`hydra_quote`. A path keeps ``${...}`` interpolations; free text keeps ``${`` literally.
      Left as typed: a value quoted by hand (``"prime='Hi, you'"``), ``null``, and in a multirun
      (``-m``) a ``,``-separated sweep (each value quoted as above), unless the whole value is an
      existing path (a multirun job folder such as ``0_data.batch_size=4,...``).
    * Any other option with non-ASCII characters (Hydra only takes ASCII unquoted) is quoted,
      unless it has ``[]{}()`` (a list, dict or function), both quote characters, or (multirun)
      a ``,``.
    """
    multirun = any(a in _MULTIRUN_FLAGS for a in argv)
    out: list[str] = []
    for arg, is_override in zip(argv, _overrides_mask(argv)):
        if not is_override:
            out.append(arg)
            continue
        key, sep, value = arg.partition("=")
        name = key.lstrip("+")
        if not sep or key.startswith("~"):
            out.append(arg)
        elif name in TEXT_KEYS or name in PATH_KEYS:
            text = name in TEXT_KEYS
            if multirun and "," in value and not _hand_quoted(value) and not (not text and Path(value).expanduser().exists()):
                o = _parse(arg)
                if o is None:  # a sweep of values Hydra cannot read unquoted: quote each one
                    value = ",".join(_verbatim(name, v, text) for v in value.split(","))
            else:
                value = _verbatim(name, value, text)
            out.append(f"{key}={value}")
        elif (
            value
            and value[0] not in "'\""
            and any(ord(c) >= 128 for c in value)
            and not _STRUCTURE & set(value)
            and not (multirun and "," in value)
            and not ("'" in value and '"' in value)
        ):
            q = "'" if "'" not in value else '"'
            stripped = value.rstrip("\\")
            value = stripped + "\\" * (2 * (len(value) - len(stripped)))  # a backslash before the closing quote is escaped
            out.append(f"{key}={q}{value}{q}")
        else:
            out.append(arg)
    return out


#: Characters that give an unquoted Hydra value a structure (list, dict, function call, sweep).
_STRUCTURE = set("[]{}()")


def decode_argv(argv: list[str]) -> list[str]:
    """Arguments that Python decoded with surrogate escapes (a non-UTF-8 locale such as
    ``LC_ALL=C`` without UTF-8 mode: ``prime=Все`` arrives as ``prime=\\udcd0\\udc92...``) are
    decoded as UTF-8; arguments that are not UTF-8 stay as they are."""
    out = []
    for arg in argv:
        if any("\udc80" <= c <= "\udcff" for c in arg):
            try:
                arg = os.fsencode(arg).decode("utf-8")
            except UnicodeError:
                pass
        out.append(arg)
    return out


def _app(config_name: str) -> str:
    return f"charlm-{config_name}"


def _quoting_hint(key: str, value: str) -> str:
    return f"to give it as one string, quote it for Hydra inside the shell's quotes: {shell_arg(f'{key}={hydra_quote(value)}')}"


def check_overrides(argv: list[str], config_name: str | None = None) -> None:
    """Check the overrides as Hydra will read them, before Hydra does, so that a mistake is one
    ``error:`` line (exit 2) that names the argument, not Hydra's raw message.

    Every override must parse in Hydra's grammar; outside a multirun it must not be a sweep
    (``a,b``); and, for a plain run of app ``config_name``, the config must compose (known keys,
    known group options).

    Raises:
        CharLMError: naming the argument and how to write it.
    """
    multirun = any(a in _MULTIRUN_FLAGS for a in argv)
    overrides: list[str] = []
    sweeps: list[str] = []
    for arg, is_override in zip(argv, _overrides_mask(argv)):
        if not is_override:
            continue
        key, sep, value = arg.partition("=")
        if not sep and not key.startswith("~"):
            what = f"{_app(config_name)} --help" if config_name else "--help"
            raise CharLMError(f"{arg}: options are given as key=value ({what} lists them)")
        o = _parse(arg)
        if o is None:
            raise CharLMError(
                f"cannot read the option {arg}: Hydra gives spaces and , ' \" ( ) [ ] {{ }} = # : a meaning in a value; "
                + _quoting_hint(key, value)
            )
        (sweeps if o.is_sweep_override() else overrides).append(arg)
    if sweeps and not multirun and not (config_name and _config_multirun(config_name, overrides)):
        key, _, value = sweeps[0].partition("=")
        raise CharLMError(
            f"{sweeps[0]}: a ',' (or a sweep function) gives several values, which needs -m (--multirun); "
            + _quoting_hint(key, value)
        )
    if config_name is not None and not multirun and not sweeps and not _FLAGS_NO_PRECHECK & set(argv):
        _check_compose(config_name, overrides)


def _config_multirun(config_name: str, overrides: list[str]) -> bool:
    """Whether the config itself asks for a multirun (``hydra.mode: MULTIRUN``, as
    ``hparams_search=optuna`` does, so that it needs no ``-m``)."""
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    from charlm.config import config_dir

    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=config_name):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        return cfg.hydra.mode == RunMode.MULTIRUN
    except Exception:  # a config that does not compose is reported by Hydra itself
        return False


def _check_compose(config_name: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from charlm.config import config_dir

    app = _app(config_name)
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=config_name):
            compose(config_name, overrides=overrides)
    except MissingConfigException as e:
        # "In 'train': Could not find 'model/lstmm'\n\nAvailable options in 'model':\n\tgru\n...\nConfig search path:..."
        text = str(e).split("Config search path")[0]
        msg = text.splitlines()[0].split("': ", 1)[-1]
        missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        group = re.search(r"Available options in '([^']+)':((?:\s+\S+)*)", text)
        if missing and group:
            msg = (f"{missing.group(1)}={missing.group(2)}: {app} has no such {missing.group(1)} config; "
                   f"choose one of {', '.join(group.group(2).split())}")
        raise CharLMError(msg) from None
    except ConfigCompositionException as e:
        msg = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
        cause = e.__cause__
        m = re.match(r"Could not override '([^']+)'", msg)
        if m and isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
            raise CharLMError(
                f"{app} has no option {m.group(1)} ({app} --help lists its options; +{m.group(1)}=<value> adds a new key)"
            ) from None
        if cause is not None:
            msg += f" ({str(cause).splitlines()[0]})"
        raise CharLMError(msg) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise CharLMError(" ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())) from None


def fix_argv(config_name: str | None = None) -> None:
    """Prepare ``sys.argv`` for Hydra: decode surrogate escapes (:func:`decode_argv`), quote free
    text and paths (:func:`quote_overrides`), and check every override (:func:`check_overrides`);
    a bad one prints ``error: ...`` and exits with status 2."""
    args = quote_overrides(decode_argv(sys.argv[1:]))
    try:
        check_overrides(args, config_name)
    except CharLMError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.argv[1:] = args
