"""Character vocabulary: the sorted set of Unicode code points of a corpus.

Sorting by code point (not by first appearance or by a ``set``'s hash order) makes the
vocabulary, and so every id, identical in every process, run and machine, whatever
``PYTHONHASHSEED`` is. char-rnn sorted its characters the same way (``table.sort``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from charlm.errors import CharLMError


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned numpy dtype that holds ids ``0 .. vocab_size - 1`` (uint8/16/32)."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


class Vocab:
    """An ordered character vocabulary mapping characters to ids ``0 .. V-1``.

    Args:
        chars: the characters, one code point each; they are sorted by code point and must be
            unique.

    Raises:
        CharLMError: if ``chars`` is empty, has duplicates or a string that is not one character.
    """

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if not chars:
            raise CharLMError("the vocabulary is empty: the corpus has no characters (input is empty)")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise CharLMError(f"vocabulary entries must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise CharLMError("vocabulary has duplicate characters")
        self.chars: list[str] = sorted(chars)
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}
        self.codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_codepoints(cls, codepoints: Sequence[int] | np.ndarray) -> "Vocab":
        """Build from integer code points (any order)."""
        return cls(chr(int(cp)) for cp in codepoints)

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: str) -> bool:
        return ch in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, chars={''.join(self.chars)[:40]!r}...)"

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned dtype for this vocabulary's ids."""
        return id_dtype(len(self))

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` not in the vocabulary, sorted."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``.

        Raises:
            CharLMError: listing the characters not in the vocabulary.
        """
        missing = self.unknown(text)
        if missing:
            raise CharLMError(
                f"{len(missing)} character(s) are not in the model's vocabulary: "
                f"{describe_chars(missing)}. Use only characters the model was trained on."
            )
        return [self.stoi[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (ints in ``0 .. V-1``)."""
        return "".join(self.chars[int(i)] for i in ids)

    def lookup_table(self) -> np.ndarray:
        """Array ``lut`` of size ``max_codepoint + 1`` with ``lut[ord(c)] = id`` (dtype :meth:`dtype`).

        Used to map a whole chunk of code points to ids in one vectorised gather.
        """
        lut = np.zeros(int(self.codepoints.max()) + 1, dtype=self.dtype)
        lut[self.codepoints] = np.arange(len(self), dtype=self.dtype)
        return lut


def vocab_difference(old: Iterable[str], new: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(only in old, only in new)``: the characters of each vocabulary that the other lacks,
    sorted (both empty when they hold the same characters, in whatever order)."""
    old, new = set(old), set(new)
    return sorted(old - new), sorted(new - old)


def describe_chars(chars: Iterable[str], limit: int = 20) -> str:
    """Human-readable list of characters with their code points, e.g. ``'é' (U+00E9)``."""
    chars = list(chars)
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:limit])
    if len(chars) > limit:
        shown += f", ... and {len(chars) - limit} more"
    return shown
