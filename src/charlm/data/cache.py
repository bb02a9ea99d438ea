"""The prepared-corpus cache: a corpus file's text turned into a vocabulary and ids, kept on disk.

Preparation streams the file in chunks and is vectorised with numpy (no Python loop per
character), so a corpus of gigabytes prepares in bounded memory (a few chunks, never a copy of
the whole text):

1. hash pass: the sha256 of the raw bytes keys the cache (an edited file gets a new key);
2. count pass: decode (strict), drop a byte-order mark, normalise line endings
   (:func:`charlm.data.corpus.iter_decoded`), and count every code point with ``np.bincount``;
   the vocabulary is the sorted set of code points seen;
3. id pass: decode again and map code points to ids with one lookup-table gather per chunk,
   writing ``ids.npy`` of the smallest unsigned dtype that fits.

UTF-8, the default, takes a byte-level fast path (:mod:`charlm.data.utf8fast`; faster, with the
same ids, vocabulary, counts and errors; BENCHMARKS.md has the speeds) whose count pass also
computes the sha256, so the file is read twice instead of three times. Other codecs take the reference path above.

The cache entry (``ids.npy``, ``vocab.json``, ``meta.json``) is written to a temporary folder
and renamed into place, so a killed preparation never leaves a half-written cache. A small
index per (path, encoding, newline) lets an unchanged file skip even the hash pass, so a second
run starts at once. It trusts a file only while its stat signature is the one recorded (device,
inode, size, mtime and ctime, all in ns): tools that restore an mtime (``cp -p``, ``rsync -t``,
``tar``) cannot restore a ctime (the kernel sets it on every change, the restoring ``utime``
included), and a replaced file has a new inode. A file changed so recently that a later change
could still get the same ctime tick (see :data:`RACY_NS`) is hashed again rather than trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.data import utf8fast
from charlm.data.corpus import (
    CHUNK_BYTES, CorpusSettingError, check_settings, default_cache_dir, iter_decoded, naming_options,
)
from charlm.data.vocab import Vocab
from charlm.errors import CharLMError
from charlm.files import new_temp_dir

log = logging.getLogger(__name__)

#: Bump when the cache layout or the preparation semantics change (old entries are ignored).
CACHE_VERSION = 1
#: A file whose ctime is less than this many ns before the index entry was written is hashed
#: again on its next use instead of trusted: file-system timestamps tick coarsely (a kernel
#: jiffy, up to 10 ms, on Linux; more on some network file systems), so a rewrite within the
#: same tick could leave the whole stat signature unchanged ("racily clean", as git calls it).
RACY_NS = 2_000_000_000


def shuffle_lines(ids: np.ndarray, newline_id: int, seed: int) -> np.ndarray:
    """The corpus with its lines in a seeded random order, so that contiguous splits hold lines
    drawn at random rather than the file's last lines (``data.shuffle_lines``).

    For a corpus of one record per line whose file order means something: makemore's
    ``names.txt`` lists names by popularity, ties in alphabetical runs of up to 2,400 names, so
    its last 10% is alphabetical and a model predicts each name from the one before it. makemore
    (Karpathy) shuffles the names before holding some out, as this does. Not for prose or code,
    where the order of the lines is the structure to learn.

    Every line keeps its characters; the permuted lines are joined by newlines, with one after
    the last line when ``ids`` ends with one, so the length is unchanged. Vectorised (numpy): it
    holds the corpus and a few int64 index arrays of its length (about 30 bytes per character at
    the peak), so it is meant for corpora of records, not for gigabytes of text.

    Args:
        ids: ``[N]`` ids of the whole corpus (any integer dtype; a memory map is read once).
        newline_id: the id of ``"\\n"``.
        seed: seed of the permutation (``numpy.random.default_rng(seed).permutation``).

    Returns:
        ``[N]`` ids in memory, same dtype: the lines in permuted order.

    Raises:
        CharLMError: if the corpus has no line break (no lines to shuffle).
    """
    n = int(ids.shape[0])
    breaks = np.flatnonzero(np.asarray(ids) == newline_id)
    if breaks.size == 0:
        raise CharLMError(
            "data.shuffle_lines is set but the corpus has no line breaks, so it has no lines to shuffle; "
            "set data.shuffle_lines=null"
        )
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [n]))
    if breaks[-1] == n - 1:  # the text ends with a newline: no line after it
        starts, ends = starts[:-1], ends[:-1]
    lengths = ends - starts
    order = np.random.default_rng(seed).permutation(lengths.size)
    span = lengths[order] + 1  # each line, then its newline
    new_starts = np.cumsum(span) - span
    src = np.repeat(starts[order] - new_starts, span) + np.arange(int(span.sum()))
    out = np.asarray(ids)[np.minimum(src, n - 1)]
    out[new_starts + lengths[order]] = newline_id
    return out[:n]


@dataclass
class PreparedCorpus:
    """A corpus turned into ids.

    Attributes:
        ids: ``[N]`` ids of the whole corpus, a read-only memory map (uint8/16/32).
        vocab: the sorted character vocabulary.
        source: the corpus file.
        sha256: hex digest of the file's raw bytes.
        encoding: the codec used to decode it.
        newline: ``"normalize"`` (``\\r\\n`` and lone ``\\r`` became ``\\n``) or ``"keep"``.
        newline_replacements: how many line endings were rewritten.
        bom_removed: whether a leading byte-order mark was dropped.
        cache_dir: the folder holding ``ids.npy``, ``vocab.json`` and ``meta.json``.
        shuffle_lines: ``None``, or the seed the lines were shuffled with
            (:meth:`lines_shuffled`); then ``ids`` is an array in memory in that order.
    """

    ids: np.ndarray
    vocab: Vocab
    source: Path
    sha256: str
    encoding: str
    newline: str
    newline_replacements: int
    bom_removed: bool
    cache_dir: Path
    shuffle_lines: int | None = None

    @property
    def num_chars(self) -> int:
        """Number of characters (ids) in the corpus, after newline normalisation."""
        return int(self.ids.shape[0])

    def lines_shuffled(self, seed: int) -> "PreparedCorpus":
        """The same corpus with its lines in the seeded random order of :func:`shuffle_lines`
        (``data.shuffle_lines``).

        Raises:
            CharLMError: if the corpus has no line break.
        """
        if "\n" not in self.vocab and "\r" in self.vocab and self.newline == "keep":
            raise CharLMError(
                "data.shuffle_lines needs \\n line breaks, and with data.newline=keep this corpus's \\r line "
                "endings stay \\r: use the default data.newline=normalize (\\r\\n and \\r become \\n)"
            )
        ids = shuffle_lines(self.ids, self.vocab.stoi.get("\n", -1), seed)  # -1: no newline anywhere
        return dataclasses.replace(self, ids=ids, shuffle_lines=int(seed))


def file_sha256(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _codepoints(text: str) -> np.ndarray:
    """``[n]`` uint32 code points of ``text`` (a view of its UTF-32 encoding)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def _index_path(cache_root: Path, path: Path, encoding: str, newline: str) -> Path:
    key = hashlib.sha256(f"{path.resolve()}|{encoding}|{newline}|{CACHE_VERSION}".encode()).hexdigest()[:24]
    return cache_root / "index" / f"{key}.json"


def _stat_signature(st: os.stat_result) -> list[int]:
    """What the cache index trusts a file by: ``[st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns]``."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _entry_dir(cache_root: Path, sha256: str, encoding: str, newline: str) -> Path:
    return cache_root / f"{sha256[:32]}-{encoding}-{newline}-v{CACHE_VERSION}"


def _load_entry(entry: Path, source: Path) -> PreparedCorpus | None:
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        chars = json.loads((entry / "vocab.json").read_text(encoding="utf-8"))
        ids = np.load(entry / "ids.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION or ids.shape[0] != meta["num_chars"]:
        return None
    return PreparedCorpus(
        ids=ids,
        vocab=Vocab(chars),
        source=source,
        sha256=meta["sha256"],
        encoding=meta["encoding"],
        newline=meta["newline"],
        newline_replacements=meta["newline_replacements"],
        bom_removed=meta["bom_removed"],
        cache_dir=entry,
    )


def prepare_corpus(
    path: str | os.PathLike,
    encoding: str = "utf-8",
    newline: str = "normalize",
    cache_dir: str | os.PathLike | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    shuffle_lines: int | None = None,
) -> PreparedCorpus:
    """Decode a text file into ids, served from (or written to) the cache.

    Args:
        path: the corpus file.
        encoding: Python codec name; decoding is strict.
        newline: ``"normalize"`` turns ``\\r\\n`` and lone ``\\r`` into ``\\n``; ``"keep"`` leaves them.
        cache_dir: cache root (default :func:`default_cache_dir`).
        chunk_bytes: bytes per chunk; bounds peak memory.
        shuffle_lines: ``None``, or a seed: the lines are then put in that seeded random order
            (:meth:`PreparedCorpus.lines_shuffled`; the cache keeps the file's order).

    Returns:
        the :class:`PreparedCorpus`; its ``ids`` is a read-only memory map (an array in memory
        when ``shuffle_lines`` is set).

    Raises:
        CorpusSettingError: if the file is missing (setting ``path``), is not valid in ``encoding``
            (with the byte offset), or ``encoding`` or ``newline`` is invalid: the app names its
            option (:func:`naming_options`).
        CharLMError: if the file is empty, or ``shuffle_lines`` is set and it has no line break.
    """
    corpus = _prepare_cached(path, encoding, newline, cache_dir, chunk_bytes)
    return corpus if shuffle_lines is None else corpus.lines_shuffled(shuffle_lines)


def _prepare_cached(
    path: str | os.PathLike, encoding: str, newline: str, cache_dir: str | os.PathLike | None, chunk_bytes: int
) -> PreparedCorpus:
    """:func:`prepare_corpus` in the file's order: the cache lookup, or the preparation."""
    source = Path(path).expanduser()
    if not source.is_file():
        what = "is not a regular file" if source.exists() else "does not exist"
        raise CorpusSettingError("path", f"corpus file {source} {what}; set ", "=<a text file>.")
    encoding = check_settings(encoding, newline)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    st = source.stat()
    if st.st_size == 0:
        raise CharLMError(f"input is empty: {source} has 0 bytes; give a text file with some characters.")

    # Fast path: the file is unchanged since it was last prepared (same stat signature).
    index = _index_path(cache_root, source, encoding, newline)
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
        if known["stat"] == _stat_signature(st) and known["indexed_ns"] - st.st_ctime_ns >= RACY_NS:
            hit = _load_entry(_entry_dir(cache_root, known["sha256"], encoding, newline), source)
            if hit is not None:
                return hit
    except (OSError, ValueError, KeyError, TypeError):
        pass

    # UTF-8: the hash is computed during the fast count pass (in a helper thread), saving a read
    # of the file; that pass is wasted only when the same content is already cached under
    # another path or mtime. Other codecs, or invalid UTF-8: hash pass, then the reference path.
    counted = None
    if encoding == "utf-8":
        h = hashlib.sha256()
        stats: dict = {}
        try:
            cps, total = utf8fast.count_pass(source, newline, stats, chunk_bytes, hasher=h)
            counted = (cps, total, stats)
        except utf8fast.InvalidUTF8:
            pass
    sha = h.hexdigest() if counted is not None else file_sha256(source, chunk_bytes)
    entry = _entry_dir(cache_root, sha, encoding, newline)
    prepared = _load_entry(entry, source)
    if prepared is None:
        _build_entry(source, encoding, newline, sha, entry, chunk_bytes, counted)
        prepared = _load_entry(entry, source)
        assert prepared is not None
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        entry_json = {"stat": _stat_signature(st), "indexed_ns": time.time_ns(), "sha256": sha}
        tmp.write_text(json.dumps(entry_json))
        os.replace(tmp, index)
    except OSError as e:  # a read-only cache still works, only slower to start
        log.warning("could not write cache index %s: %s", index, e)
    return prepared


def training_corpus(
    data: Mapping, encoding: str, newline: str, cache_dir: str | os.PathLike | None, names: Mapping[str, str], hint: str
) -> PreparedCorpus:
    """Prepare the corpus a checkpoint was trained on, for an app that reads a split of it
    (``charlm-eval``, ``charlm-visualize``).

    Args:
        data: the checkpoint's description of its training data (``ckpt["charlm"]["data"]``);
            its ``source`` is the corpus file, its ``shuffle_lines`` the line order it was split in.
        encoding, newline, cache_dir: as for :func:`prepare_corpus`.
        names: the app's option for each corpus setting, for its errors (:func:`naming_options`).
        hint: what to give instead when the corpus is not available, with the app's command
            (``"give the text: charlm-visualize ckpt=... text=<file or string>"``).

    Raises:
        CharLMError: ``the checkpoint's training corpus '<source>' is not available here; <hint>``
            when the checkpoint names no corpus or the file is not here; else as :func:`prepare_corpus`.
    """
    source = data.get("source")
    if not source or not Path(source).is_file():
        raise CharLMError(f"the checkpoint's training corpus {source!r} is not available here; {hint}")
    with naming_options(names):
        return prepare_corpus(source, encoding, newline, cache_dir, shuffle_lines=data.get("shuffle_lines"))


def _build_entry(
    source: Path, encoding: str, newline: str, sha: str, entry: Path, chunk_bytes: int, counted: tuple | None = None,
) -> None:
    """Count pass + id pass; writes the cache entry atomically (temporary folder, then rename).

    UTF-8 (the default) takes the byte-level fast path of :mod:`charlm.data.utf8fast`; every
    other codec, and a file that is not valid UTF-8 (for the exact error offset), takes the
    reference path through :func:`iter_decoded`. Both give identical entries. ``counted``:
    ``(codepoints, total, stats)`` of a UTF-8 count pass already done.
    """
    if encoding == "utf-8":
        try:
            if counted is None:
                stats: dict = {}
                counted = (*utf8fast.count_pass(source, newline, stats, chunk_bytes), stats)
            cps, total, stats = counted
            _write_entry(source, encoding, newline, sha, entry, cps, total, stats,
                         lambda lut: utf8fast.iter_ids(source, newline, lut, chunk_bytes))
            return
        except utf8fast.InvalidUTF8:
            pass  # the reference decoder below raises the error with its byte offset
    stats = {}
    counts = np.zeros(0, dtype=np.int64)
    for text in iter_decoded(source, encoding, newline, stats, chunk_bytes):
        c = np.bincount(_codepoints(text))
        if c.shape[0] > counts.shape[0]:
            c[: counts.shape[0]] += counts
            counts = c
        else:
            counts[: c.shape[0]] += c
    _write_entry(source, encoding, newline, sha, entry, np.flatnonzero(counts), int(counts.sum()), stats,
                 lambda lut: (lut[_codepoints(text)] for text in iter_decoded(source, encoding, newline, {}, chunk_bytes)))


def _write_entry(source: Path, encoding: str, newline: str, sha: str, entry: Path, codepoints: np.ndarray,
                 total: int, stats: dict, iter_ids) -> None:
    """Write ``ids.npy`` (from ``iter_ids(lut)``, chunks of ids), ``vocab.json``, ``meta.json``."""
    if total == 0:
        raise CharLMError(
            f"input is empty: {source} has no characters after decoding"
            f"{' (only a byte-order mark)' if stats['bom_removed'] else ''}; give a text file with some text."
        )
    vocab = Vocab.from_codepoints(codepoints)
    lut = vocab.lookup_table()

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(entry.parent, prefix=f".{entry.name}.")
    try:
        # Written through a plain file, not a writable memmap: dirty memmap pages count in this
        # process's RSS (a 1 GB corpus made the peak RSS > 1 GB); file writes keep it ~chunks.
        pos = 0
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(vocab.dtype)), "fortran_order": False, "shape": (total,)}
        with open(tmp / "ids.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for ids in iter_ids(lut):
                f.write(memoryview(np.ascontiguousarray(ids)).cast("B"))
                pos += ids.shape[0]
        assert pos == total, (pos, total)
        (tmp / "vocab.json").write_text(json.dumps(vocab.chars, ensure_ascii=True), encoding="utf-8")
        meta = {
            "version": CACHE_VERSION,
            "source": str(source),
            "sha256": sha,
            "encoding": encoding,
            "newline": newline,
            "num_chars": total,
            "vocab_size": len(vocab),
            "newline_replacements": stats["newline_replacements"],
            "bom_removed": stats["bom_removed"],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (entry / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
