"""Fast UTF-8 corpus preparation on raw bytes (the default ``data.encoding=utf-8``).

:func:`charlm.data.corpus.iter_decoded` decodes every chunk to ``str`` and encodes it again to
UTF-32 to get code points, and preparation needs it twice. Here the bytes are processed
directly, and only the non-ASCII bytes ever go through Python's decoder (the speeds of both
paths: BENCHMARKS.md, "Corpus preparation"):

- line endings and the byte-order mark are handled on bytes (``\\r``, ``\\n`` and the BOM's
  bytes never occur inside another UTF-8 sequence, so this is exact);
- validation: a byte string is valid UTF-8 iff each maximal run of non-ASCII bytes is, so each
  chunk is reduced to its non-ASCII runs, each followed by one ASCII byte as a separator, and
  that (small) string is decoded strictly; its non-ASCII characters are, in order, the
  chunk's non-ASCII characters;
- ids: ``bytes.translate`` maps every ASCII byte to its id and deletes continuation bytes in
  one C pass; the one remaining byte per multi-byte character (its lead byte) is then
  overwritten with that character's id by a numpy scatter.

Any decoding error raises :class:`InvalidUTF8`; the caller then reruns the reference decoder,
which reports the exact byte offset (the same message as before).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BOM = b"\xef\xbb\xbf"
#: UTF-8 continuation bytes 0b10xxxxxx.
CONTINUATION = bytes(range(0x80, 0xC0))
#: Bytes processed at a time: a chunk and its temporaries stay in the CPU cache (on the 1 GB
#: benchmark corpus 1 MiB ran ~1.3x faster than 8 MiB).
FAST_CHUNK_BYTES = 1 << 20


class InvalidUTF8(Exception):
    """The file is not valid UTF-8 (the reference decoder then gives the exact offset)."""


def _incomplete_tail(buf: bytes) -> int:
    """Length of a trailing, incomplete multi-byte sequence of ``buf`` (0 if none)."""
    n = len(buf)
    for k in range(1, min(4, n) + 1):
        x = buf[n - k]
        if x < 0x80:
            return 0
        if x >= 0xC0:  # lead byte: expected sequence length
            need = 2 if x < 0xE0 else 3 if x < 0xF0 else 4 if x < 0xF8 else 1
            return k if k < need else 0
    return 0  # only continuation bytes: complete or invalid, the decode decides


_HIGH_BITS = np.uint64(0x8080808080808080)


def _non_ascii_positions(b: np.ndarray) -> np.ndarray:
    """``[m]`` int64 positions of the bytes >= 0x80 of ``b`` (uint8): scans 8 bytes per word,
    then looks only inside the words that have one (non-ASCII text is sparse in most corpora)."""
    n8 = b.shape[0] // 8 * 8
    words = np.flatnonzero(b[:n8].view(np.uint64) & _HIGH_BITS)
    inside = b[:n8].reshape(-1, 8)[words] >= 0x80  # [w, 8]
    w, j = np.nonzero(inside)
    pos = words[w] * 8 + j
    if n8 < b.shape[0]:
        pos = np.concatenate([pos, n8 + np.flatnonzero(b[n8:] >= 0x80)])
    return pos


class Chunk:
    """One validated, BOM-stripped, newline-normalised chunk of UTF-8 bytes.

    Attributes:
        raw: the bytes (complete sequences only).
        na_idx: ``[m]`` int64 positions in ``raw`` of the bytes >= 0x80.
        lead: ``[m]`` bool, True where ``na_idx`` is a lead byte (not a continuation byte).
        cps: ``[k]`` uint32 code points of the non-ASCII characters in order (``k = lead.sum()``).
    """

    __slots__ = ("raw", "na_idx", "lead", "cps")

    def __init__(self, raw: bytes):
        self.raw = raw
        if raw.isascii():
            self.na_idx = np.zeros(0, np.int64)
            self.lead = np.zeros(0, bool)
            self.cps = np.zeros(0, np.uint32)
            return
        b = np.frombuffer(raw, np.uint8)
        na = _non_ascii_positions(b)
        # one ASCII separator (a space) after each non-ASCII run keeps the runs apart
        run_ends = np.flatnonzero(np.diff(na) != 1) + 1
        try:
            text = np.insert(b[na], run_ends, 0x20).tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidUTF8 from None
        cps = np.frombuffer(text.encode("utf-32-le"), "<u4")
        self.na_idx = na
        self.lead = b[na] >= 0xC0
        self.cps = cps[cps >= 0x80]
        if self.cps.shape[0] != int(self.lead.sum()):  # cannot happen for valid UTF-8
            raise InvalidUTF8

    @property
    def num_chars(self) -> int:
        return len(self.raw) - (self.na_idx.shape[0] - self.cps.shape[0])

    def lead_positions(self) -> np.ndarray:
        """``[k]`` positions of the non-ASCII characters once continuation bytes are deleted."""
        conts_before = np.cumsum(~self.lead)
        return self.na_idx[self.lead] - conts_before[self.lead]


def _read(path: Path, chunk_bytes: int, hasher=None) -> Iterator[bytes]:
    """The raw chunks of ``path``, then ``b""``; feeds ``hasher`` in a helper thread."""
    pool = ThreadPoolExecutor(1) if hasher is not None else None
    hashing = None
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(chunk_bytes)
                if pool is not None:
                    if hashing is not None:
                        hashing.result()  # updates stay in file order
                    hashing = pool.submit(hasher.update, raw)
                yield raw
                if not raw:
                    return
    finally:
        if pool is not None:
            if hashing is not None:
                hashing.result()
            pool.shutdown()


def iter_chunks(path: Path, newline: str, stats: dict, chunk_bytes: int, hasher=None) -> Iterator[Chunk]:
    """Yield :class:`Chunk` s of ``path``, like :func:`charlm.data.corpus.iter_decoded` yields text.

    Fills ``stats`` with ``newline_replacements`` and ``bom_removed``. ``hasher.update`` is fed
    the raw bytes in a helper thread (hashlib releases the GIL), overlapping the numpy work.

    Raises:
        InvalidUTF8: if the file is not valid UTF-8.
    """
    stats["newline_replacements"] = 0
    stats["bom_removed"] = False
    pending = b""  # an incomplete multi-byte sequence held back for the next chunk
    carry = b""  # a trailing "\r" held back in case the next chunk starts with "\n"
    first = True
    for raw in _read(path, min(chunk_bytes, FAST_CHUNK_BYTES), hasher):
        final = not raw
        buf = pending + raw if pending else raw
        if first:
            if len(buf) < 3 and not final and BOM.startswith(buf):
                pending = buf  # could still be a BOM: wait for more bytes
                continue
            first = False
            if buf.startswith(BOM):
                buf = buf[3:]
                stats["bom_removed"] = True
        if final:
            pending = b""
        else:
            k = _incomplete_tail(buf)
            if k:
                buf, pending = buf[:-k], buf[-k:]
            else:
                pending = b""
        if newline == "normalize":
            if carry:
                buf = carry + buf
                carry = b""
            if not final and buf.endswith(b"\r"):
                buf, carry = buf[:-1], b"\r"
            if b"\r" in buf:
                crlf = buf.count(b"\r\n")
                buf = buf.replace(b"\r\n", b"\n")
                cr = buf.count(b"\r")
                buf = buf.replace(b"\r", b"\n")
                stats["newline_replacements"] += crlf + cr
        if buf:
            yield Chunk(buf)  # an undecodable final pending tail raises here
        if final:
            return


def count_pass(path: Path, newline: str, stats: dict, chunk_bytes: int, hasher=None) -> tuple[np.ndarray, int]:
    """Sorted ``[V]`` uint32 code points present in ``path`` and the number of characters.

    ``hasher`` (e.g. ``hashlib.sha256()``), when given, is updated with the file's raw bytes.

    Raises:
        InvalidUTF8: if the file is not valid UTF-8.
    """
    ascii_seen = np.zeros(256, bool)
    ascii_seen[0x80:] = True  # non-ASCII bytes are accounted for by ``cps``
    flag = np.where(ascii_seen, 0, 0x80).astype(np.uint8).tobytes()  # byte -> 0x80 if not seen yet
    non_ascii = np.zeros(0x110000, bool)  # seen non-ASCII code points
    total = 0
    for ch in iter_chunks(path, newline, stats, chunk_bytes, hasher):
        total += ch.num_chars
        if not ch.raw.translate(flag).isascii():  # some ASCII byte not seen before
            ascii_seen |= np.bincount(np.frombuffer(ch.raw, np.uint8), minlength=256) > 0
            flag = np.where(ascii_seen, 0, 0x80).astype(np.uint8).tobytes()
        non_ascii[ch.cps] = True
    cps = np.concatenate([np.flatnonzero(ascii_seen[:0x80]), np.flatnonzero(non_ascii)])
    return cps.astype(np.uint32), total


def iter_ids(path: Path, newline: str, lut: np.ndarray, chunk_bytes: int) -> Iterator[np.ndarray]:
    """Yield ``[n]`` ids per chunk; ``lut[cp] = id`` (dtype of the ids) covers every code point."""
    dtype = lut.dtype
    if lut.shape[0] < 256:
        lut = np.concatenate([lut, np.zeros(256 - lut.shape[0], dtype)])
    table = lut[:256].tobytes() if dtype == np.uint8 else None  # bytes -> ids for translate
    for ch in iter_chunks(path, newline, {}, chunk_bytes):
        if table is not None:
            ids = np.frombuffer(bytearray(ch.raw).translate(table, CONTINUATION), np.uint8)
        else:
            ids = lut[np.frombuffer(ch.raw.translate(None, CONTINUATION), np.uint8)]
        if ch.cps.shape[0]:
            ids[ch.lead_positions()] = lut[ch.cps]
        yield ids
