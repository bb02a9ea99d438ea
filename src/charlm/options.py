"""Option values checked for type and range, with one-line messages that name the option.

Hydra hands an app whatever the command line parsed to: ``top_k=2.5`` is a float, ``seed=abc``
a string, ``length=true`` a bool. Used as they are, they end in torch tracebacks or are silently
cut (``int(2.7) == 2``). Each app declares its options as :class:`Opt` specs and checks them
before doing any work (:func:`check_options`); library functions check single values with
:func:`check_value`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from charlm.errors import CharLMError

_ABSENT = object()


@dataclass(frozen=True)
class Opt:
    """The type and range of one option.

    Attributes:
        kind: ``int`` (a whole number; ``true``/``2.5``/``"5"`` are refused), ``float`` (any finite
            number, integers included), ``bool`` (``true``/``false``) or ``str`` (with ``choices``).
        min, max: inclusive bounds. gt, lt: exclusive bounds.
        null: when ``None`` is allowed, what it means (shown in the message), e.g. ``"no limit"``.
        choices: the allowed values of a ``str`` option.
        fraction: for ``int`` options that Lightning also takes as a fraction (``0.25`` of the
            batches): a float in ``(0, 1]`` is accepted too.
    """

    kind: type = int
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None
    null: str | None = None
    choices: tuple[str, ...] = ()
    fraction: bool = False

    def describe(self) -> str:
        """What a valid value is, e.g. ``an integer >= 1 (or null: no limit)``."""
        if self.kind is bool:
            what = "true or false"
        elif self.kind is str:
            what = "one of " + ", ".join(self.choices)
        else:
            what = "an integer" if self.kind is int else "a finite number"
            bounds = [f"{op} {_num(v)}" for op, v in ((">=", self.min), (">", self.gt), ("<=", self.max), ("<", self.lt)) if v is not None]
            if bounds:
                what += " " + " and ".join(bounds)
            if self.fraction:
                what += ", or a fraction in (0, 1]"
        if self.null is not None:
            what += f" (or null: {self.null})"
        return what


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def show(value: Any) -> str:
    """A value as typed on the command line: ``null``, ``true``, ``2.5``, ``abc``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ok(value: Any, opt: Opt) -> bool:
    if value is None:
        return opt.null is not None
    if opt.kind is bool:
        return isinstance(value, bool)
    if opt.kind is str:
        return isinstance(value, str) and value in opt.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if opt.kind is int and not isinstance(value, int):
        return opt.fraction and math.isfinite(value) and 0 < value <= 1
    if not math.isfinite(value):
        return False
    return not (
        (opt.min is not None and value < opt.min)
        or (opt.max is not None and value > opt.max)
        or (opt.gt is not None and value <= opt.gt)
        or (opt.lt is not None and value >= opt.lt)
    )


def check_value(name: str, value: Any, opt: Opt) -> Any:
    """Return ``value`` if it is valid for ``opt``.

    Raises:
        CharLMError: ``<name>=<value> must be <what opt allows>``, e.g. ``top_k=2.5 must be an
            integer >= 1 (or null: all characters)``.
    """
    if not _ok(value, opt):
        raise CharLMError(f"{name}={show(value)} must be {opt.describe()}")
    return value


def check_options(cfg: DictConfig | Mapping, spec: Mapping[str, Opt]) -> None:
    """Check every option of ``spec`` (dotted keys) that ``cfg`` has; keys the config does not
    hold (a callback left out, ``scheduler=none``) are skipped.

    Raises:
        CharLMError: naming the first invalid option, its value and what it must be.
    """
    for key, opt in spec.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT) if isinstance(cfg, DictConfig) else cfg.get(key, _ABSENT)
        if value is not _ABSENT:
            check_value(key, value, opt)
