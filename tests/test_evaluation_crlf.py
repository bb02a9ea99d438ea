"""charlm.evaluation.crlf: losses rescaled to the War and Peace paper's count, where each newline was \\r\\n."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charlm.data.cache import prepare_corpus
from charlm.data.streams import split_bounds
from charlm.data.vocab import Vocab
from charlm.evaluation.crlf import count_newlines, crlf_loss


def test_crlf_loss_by_hand():
    # 10 characters at 1.5 nats/char = 15 nats; 2 of them newlines -> 15 nats over 12 characters
    r = crlf_loss(1.5, 10, 2)
    assert r == {"loss": 1.25, "bpc": pytest.approx(1.25 / math.log(2)), "chars": 12}
    assert crlf_loss(1.5, 10, 0)["loss"] == 1.5
    v = Vocab("ab\n")
    assert count_newlines(np.array(v.encode("a\nb\n\n")), v) == 3
    assert count_newlines(np.array([0, 1]), Vocab("ab")) == 0  # a vocabulary without a newline


def test_war_and_peace_counts(shared_data, tmp_path):
    c = prepare_corpus(shared_data / "warpeace" / "input.txt", cache_dir=tmp_path)
    assert count_newlines(c.ids, c.vocab) == c.newline_replacements == 62_016  # every lone \r of the file
    b, e = split_bounds(c.num_chars, (0.8, 0.1, 0.1))[2]
    test = c.ids[b:e]
    n = count_newlines(test[1:], c.vocab)
    r = crlf_loss(1.2, e - b - 1, n)
    assert r["chars"] == e - b - 1 + n and 5_000 < n < 7_000
    assert r["loss"] == pytest.approx(1.2 * (e - b - 1) / (e - b - 1 + n))
