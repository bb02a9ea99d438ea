"""Option values checked for type and range (charlm.options): the messages every app prints."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from charlm.errors import CharLMError
from charlm.options import Opt, check_options, check_value


@pytest.mark.parametrize("opt,good,bad", [
    (Opt(int, min=1), [1, 7], [0, 2.5, True, "5", None, "abc"]),
    (Opt(int, min=-1, null="none"), [-1, 0, None], [-2, 1.0, False]),
    (Opt(int, min=1, fraction=True), [1, 0.25, 1.0, 300], [0, 0.0, 1.5, -0.5, math.nan]),
    (Opt(float, gt=0), [1, 1e-3], [0, -1, math.inf, math.nan, "x", True]),
    (Opt(float, min=0, lt=1), [0, 0.5], [1, 1.0, -0.1]),
    (Opt(bool), [True, False], [1, 0, "true", None]),
    (Opt(str, choices=("train", "val")), ["val"], ["dev", 1, None]),
])
def test_values_are_checked_for_type_and_range(opt, good, bad):
    for v in good:
        assert check_value("k", v, opt) is v or check_value("k", v, opt) == v
    for v in bad:
        with pytest.raises(CharLMError, match=r"^k=\S+ must be "):
            check_value("k", v, opt)


def test_messages_name_the_option_the_value_as_typed_and_what_it_must_be():
    cases = [
        (Opt(int, min=1, null="all characters"), 2.5, "top_k=2.5 must be an integer >= 1 (or null: all characters)"),
        (Opt(int), "abc", "top_k=abc must be an integer"),
        (Opt(int, min=0), True, "top_k=true must be an integer >= 0"),
        (Opt(float, min=0, lt=1), 1, "top_k=1 must be a finite number >= 0 and < 1"),
        (Opt(bool), None, "top_k=null must be true or false"),
        (Opt(str, choices=("a", "b")), "c", "top_k=c must be one of a, b"),
        (Opt(int, min=1, fraction=True), 2.5, "top_k=2.5 must be an integer >= 1, or a fraction in (0, 1]"),
    ]
    for opt, value, message in cases:
        with pytest.raises(CharLMError) as e:
            check_value("top_k", value, opt)
        assert str(e.value) == message


def test_check_options_reads_dotted_keys_and_skips_absent_ones():
    cfg = OmegaConf.create({"data": {"batch_size": 4, "eval_batch_size": "${.batch_size}"}, "seed": 1})
    spec = {"data.batch_size": Opt(int, min=1), "data.eval_batch_size": Opt(int, min=1), "scheduler.warmup_steps": Opt(int)}
    check_options(cfg, spec)  # scheduler.warmup_steps absent (scheduler=none): skipped
    cfg.data.batch_size = 0
    with pytest.raises(CharLMError, match=r"^data\.batch_size=0 must be an integer >= 1$"):
        check_options(cfg, spec)
