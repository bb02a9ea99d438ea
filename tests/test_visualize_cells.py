"""charlm.visualize.cells: the text features (quotes, brackets, comments, line position, ...) and
the cells that track them."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.visualize import find_cells, text_features
from conftest import shakespeare_excerpt


def test_text_features():
    text = 'a "b" (c [d]) # x\nAB: y\n'
    f = text_features(text)
    bits = {k: "".join(str(int(v) % 10) for v in a) for k, a in f.items()}
    assert bits["in_quotes"] == "001110000000000000000000"
    assert bits["line_position"] == "123456789012345670123450"
    assert bits["bracket_depth"] == "000000111221000000000000"
    assert bits["in_comment"] == "000000000000001110000000"
    assert bits["word_position"] == "101230120123401010123010"
    assert bits["caps_line"] == "000000000000000000111100"
    assert bits["in_single_quotes"] == "0" * len(text)
    code = "def f(x):\n    s = 'a(b'\n\tif x:\n"
    cf = {k: "".join(str(int(v) % 10) for v in a) for k, a in text_features(code).items()}
    assert cf["indentation"] == "0000000000" + "12344444444440" + "1111110"  # 4 spaces, then a tab
    assert cf["in_single_quotes"] == "0000000000" + "00000000111110" + "0000000"
    block = text_features("x /* y */ z // w\nv")["in_comment"]
    assert "".join(str(int(v)) for v in block) == "001111111000111100"


def test_find_cells_finds_a_planted_cell():
    text = shakespeare_excerpt(400)
    rng = np.random.default_rng(0)
    states = {"h": rng.normal(size=(2, 400, 8)).astype(np.float32), "c": rng.normal(size=(2, 400, 8)).astype(np.float32)}
    pos = text_features(text)["line_position"]
    states["c"][1, :, 5] = -0.02 * pos + 0.1  # a perfect (negative) line-length cell
    found = {e["feature"]: e for e in find_cells(states, text)}
    best = found["line_position"]["cells"][0]
    assert (best["layer"], best["state"], best["unit"]) == (1, "c", 5)
    assert best["r"] == pytest.approx(-1.0, abs=1e-6)
    assert found["in_quotes"]["constant"] and found["in_quotes"]["cells"] == []  # Shakespeare has no "
