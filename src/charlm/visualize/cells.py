"""Automatically found interpretable cells: text features and the cells that track them.

Simple features are computed from the text alone, one value per character (the value *after*
reading it, aligned with the states of :class:`~charlm.visualize.activations.Trace`), and every
cell (layer, state, unit) is ranked by the absolute Pearson correlation of its activation with
each feature, in the spirit of the quote-, line-length- and bracket-tracking cells of Karpathy's
"The Unreasonable Effectiveness of Recurrent Neural Networks" (2015).
"""

from __future__ import annotations

import numpy as np

#: Feature name -> short description shown in the page.
FEATURES = {
    "in_quotes": 'inside "double quotes"',
    "in_single_quotes": "inside 'single quotes' (strings in code; an apostrophe in prose also toggles it)",
    "line_position": "characters since the last newline",
    "bracket_depth": "nesting depth of ( [ {",
    "in_comment": "inside a comment (# or // to the end of the line, /* ... */)",
    "word_position": "characters since the last space or newline",
    "caps_line": "in a line whose letters so far are all capitals (speaker names in plays)",
    "indentation": "spaces and tabs at the start of the line (code indentation)",
}


def text_features(text: str) -> dict[str, np.ndarray]:
    """Per-character features of ``text``: ``{name: float64 [T]}`` (see :data:`FEATURES`).

    ``in_quotes`` is 1 from an opening ``"`` up to and including the closing one;
    ``line_position`` counts characters since the last newline (0 at the newline itself);
    ``bracket_depth`` is the number of open ``([{`` (never below 0); ``in_comment`` is 1 from
    ``#`` or ``//`` to the end of the line and inside ``/* ... */``; ``word_position`` counts
    characters since the last space or newline (0 at them); ``caps_line`` is 1 while the current
    line has at least one letter and all its letters so far are capitals (0 at the newline);
    ``in_single_quotes`` is ``in_quotes`` for ``'``; ``indentation`` counts the spaces and tabs
    that start the current line, growing through them and then held to the end of the line
    (0 at the newline).
    """
    n = len(text)
    quotes = np.zeros(n)
    pos = np.zeros(n)
    depth = np.zeros(n)
    comment = np.zeros(n)
    word = np.zeros(n)
    caps = np.zeros(n)
    squotes = np.zeros(n)
    indent = np.zeros(n)
    wcol, n_upper, n_lower = 0, 0, 0
    insq, ind, leading = False, 0, True
    inq, col, d, line_c, block_start = False, 0, 0, False, -1
    for t, ch in enumerate(text):
        prev = text[t - 1] if t else ""
        if ch == '"':
            inq = not inq
            quotes[t] = 1.0  # both quote marks count as inside
        else:
            quotes[t] = float(inq)
        col = 0 if ch == "\n" else col + 1
        pos[t] = col
        if ch in "([{":
            d += 1
        elif ch in ")]}":
            d = max(d - 1, 0)
        depth[t] = d
        in_block = block_start >= 0
        if ch == "\n":
            line_c = False
        elif not in_block and not line_c:
            if ch == "#" or (prev == "/" and ch == "/"):
                line_c = True
                if ch == "/":
                    comment[t - 1] = 1.0
            elif prev == "/" and ch == "*":
                block_start = t
                comment[t - 1] = 1.0
        comment[t] = float(line_c or block_start >= 0)
        if block_start >= 0 and t > block_start + 1 and prev == "*" and ch == "/":
            block_start = -1
        wcol = 0 if ch in " \n" else wcol + 1
        word[t] = wcol
        if ch == "\n":
            n_upper = n_lower = 0
        elif ch.isalpha():
            n_upper += ch.isupper()
            n_lower += not ch.isupper()
        caps[t] = float(n_upper > 0 and n_lower == 0)
        if ch == "'":
            insq = not insq
            squotes[t] = 1.0  # both quote marks count as inside
        else:
            squotes[t] = float(insq)
        if ch == "\n":
            ind, leading = 0, True
        elif leading and ch in " \t":
            ind += 1
        else:
            leading = False
        indent[t] = ind
    return {"in_quotes": quotes, "in_single_quotes": squotes, "line_position": pos, "bracket_depth": depth,
            "in_comment": comment, "word_position": word, "caps_line": caps, "indentation": indent}


def correlations(acts: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson correlation of every unit with a feature.

    Args:
        acts: float ``[T, N]`` activations.
        feature: float ``[T]``.

    Returns:
        float64 ``[N]`` in [-1, 1]; 0 for a unit (or feature) that is constant over the text.
    """
    a = acts.astype(np.float64) - acts.mean(axis=0)
    f = feature.astype(np.float64) - feature.mean()
    denom = np.sqrt((a * a).sum(axis=0) * (f * f).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * f[:, None]).sum(axis=0) / denom
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def find_cells(states: dict[str, np.ndarray], text: str, top: int = 3) -> list[dict]:
    """The cells most correlated with each text feature.

    Args:
        states: ``{"h"|"c": float [L, T, H]}`` (``Trace.states``).
        text: the ``T`` characters the states were computed over.
        top: cells listed per feature.

    Returns:
        One dict per feature, in :data:`FEATURES` order: ``{"feature", "description", "constant",
        "cells": [{"layer", "state", "unit", "r"}, ...]}`` sorted by ``|r|`` descending;
        ``constant`` is true (and ``cells`` empty) when the feature does not vary over the text,
        so no correlation exists (e.g. no quotes in it).
    """
    feats = text_features(text)
    out = []
    for name, f in feats.items():
        entry = {"feature": name, "description": FEATURES[name], "constant": bool(np.ptp(f) == 0) if len(f) else True, "cells": []}
        if not entry["constant"]:
            cands = []
            for s, arr in states.items():
                L, T, H = arr.shape
                r = correlations(arr.transpose(1, 0, 2).reshape(T, L * H), f)
                for j in np.argsort(-np.abs(r))[:top]:
                    cands.append({"layer": int(j // H), "state": s, "unit": int(j % H), "r": float(r[j])})
            cands.sort(key=lambda c: -abs(c["r"]))
            entry["cells"] = cands[:top]
        out.append(entry)
    return out
