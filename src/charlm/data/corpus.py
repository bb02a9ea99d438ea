"""Corpus files: locate or download a corpus, and read its text with its encoding and newline
settings.

Decoding is strict (an undecodable byte is an error that gives its byte offset), a leading
byte-order mark is dropped, and ``newline="normalize"`` turns ``\\r\\n`` and lone ``\\r`` into
``\\n``. A bad setting raises :class:`CorpusSettingError`, which names the setting; the app words
it with its own option names (:func:`naming_options`).

The ids of a corpus, and their cache, are :mod:`charlm.data.cache`'s; it reads the text through
:func:`iter_decoded`.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import logging
import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from charlm.errors import CharLMError
from charlm.files import new_temp_file

log = logging.getLogger(__name__)

#: Bytes read per chunk: bounds memory (a chunk is held as bytes, str and uint32 at once).
CHUNK_BYTES = 8 << 20
NEWLINE_MODES = ("normalize", "keep")


# --------------------------------------------------------------------------------------------
# Locating and downloading
# --------------------------------------------------------------------------------------------


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary file, then rename), checking its sha256.

    Raises:
        CharLMError: if the download fails or the checksum differs; ``dest`` is then untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if sha256 and h.hexdigest() != sha256:
            raise CharLMError(
                f"downloaded {url} but its sha256 is {h.hexdigest()}, expected {sha256}: "
                "the file is corrupt or has changed upstream."
            )
        os.replace(tmp, dest)
    except CharLMError:
        raise
    except Exception as e:  # network errors of every kind: URLError, timeout, HTTPError, OSError
        raise CharLMError(f"could not download {url}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


#: Named corpora that charlm builds offline (name -> module with ``build(cache_dir, filename)``).
GENERATED = {"pycode": "charlm.data.pycode"}


def default_cache_dir() -> Path:
    """``$CHARLM_CACHE_DIR`` or ``data/cache`` under the current directory: where a generated
    corpus is built and (:mod:`charlm.data.cache`) prepared ids are cached when no ``cache_dir``
    is given."""
    return Path(os.environ.get("CHARLM_CACHE_DIR") or "data/cache")


def resolve_corpus_path(
    name: str,
    filename: str,
    data_dir: str | os.PathLike,
    url: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Path of the named corpus ``<data_dir>/<name>/<filename>``, downloading it if missing.

    A corpus that charlm builds itself (:data:`GENERATED`, e.g. ``pycode``) and that is not at
    that path is built (once) under ``cache_dir`` instead, since ``data_dir`` may be read-only.

    Args:
        name: corpus name, e.g. ``"tinyshakespeare"``.
        filename: file name inside the corpus folder, e.g. ``"input.txt"``.
        data_dir: the data root (``paths.data_dir``; ``$CHARLM_DATA_DIR`` when set).
        url: public address to download from when the file is missing.
        sha256: expected checksum of the download.
        cache_dir: where a generated corpus is built (default :func:`default_cache_dir`).

    Raises:
        CharLMError: if the file is missing and has no download address; the message says
            exactly where to put the file.
        CorpusSettingError: (setting ``data_dir``) if the download fails; the message says
            where to put the file.
    """
    path = Path(data_dir).expanduser() / name / filename
    if path.is_file():
        return path
    if not url and name in GENERATED:
        import importlib

        builder = importlib.import_module(GENERATED[name])
        return builder.build(cache_dir if cache_dir is not None else default_cache_dir(), filename)
    if not url:
        raise CharLMError(f"corpus {name!r} not found at {path} and it has no download address; put the file there.")
    log.info("corpus %r not found at %s; downloading %s", name, path, url)
    try:
        return download(url, path, sha256)
    except CharLMError as e:
        raise CorpusSettingError(
            "data_dir",
            f"corpus {name!r} is not at {path} and downloading it failed ({e}). "
            f"Offline? Copy the file to {path} (or point ",
            f" / $CHARLM_DATA_DIR at a folder holding {name}/{filename}).",
        ) from e


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


class CorpusSettingError(CharLMError):
    """A corpus that cannot be read because of one of its settings, ``setting``: ``"path"``,
    ``"encoding"``, ``"newline"`` or ``"data_dir"``. The message names the setting by that word
    (``Set encoding=<the file's encoding>``); the app, which knows what its option is called,
    words it with :meth:`worded` or :func:`naming_options` (``Set data.encoding=...``).

    Args:
        setting: the setting concerned.
        pieces: the message, split where the option's name goes.
    """

    def __init__(self, setting: str, *pieces: str):
        self.setting = setting
        self.pieces = pieces
        super().__init__(setting.join(pieces))

    def __reduce__(self):
        return type(self), (self.setting, *self.pieces)

    def worded(self, option: str) -> CharLMError:
        """The same message naming the setting ``option`` (an app's name for it, e.g. ``file``)."""
        return CharLMError(option.join(self.pieces))


@contextlib.contextmanager
def naming_options(names: Mapping[str, str]):
    """Within the block, a :class:`CorpusSettingError` is re-raised as a :class:`CharLMError`
    naming the app's option for its setting: ``names`` maps a setting to the option
    (``{"path": "file", "encoding": "encoding"}`` in charlm-eval); a setting not in ``names``
    keeps its own word."""
    try:
        yield
    except CorpusSettingError as e:
        if e.setting not in names:
            raise
        raise e.worded(names[e.setting]) from None


def check_settings(encoding: str, newline: str) -> str:
    """The canonical name of codec ``encoding`` (``"UTF8"`` -> ``"utf-8"``), once ``encoding`` and
    ``newline`` are checked.

    Raises:
        CorpusSettingError: if ``encoding`` is not a Python codec (setting ``encoding``) or
            ``newline`` is not one of :data:`NEWLINE_MODES` (setting ``newline``).
    """
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise CorpusSettingError(
            "encoding", "unknown text encoding ",
            f"={encoding!r}; use a Python codec name such as 'utf-8', 'latin-1', 'cp1252' or 'gbk'."
        ) from None
    if newline not in NEWLINE_MODES:
        raise CorpusSettingError("newline", "", f"={newline!r} is not one of {NEWLINE_MODES}")
    return codec.name


def read_text(path: str | os.PathLike, encoding: str = "utf-8", newline: str = "normalize") -> str:
    """The whole text of a (small) file decoded as :func:`~charlm.data.cache.prepare_corpus`
    decodes it: strict ``encoding``, byte-order mark dropped, newlines per ``newline``; no cache.

    Raises:
        CorpusSettingError: if a setting is invalid or a byte cannot be decoded (with its byte
            offset and the setting to change, as in :func:`~charlm.data.cache.prepare_corpus`).
    """
    encoding = check_settings(encoding, newline)
    return "".join(iter_decoded(Path(path), encoding, newline, {}))


def iter_decoded(path: Path, encoding: str, newline: str, stats: dict, chunk_bytes: int = CHUNK_BYTES):
    """Yield the decoded, BOM-stripped, newline-normalised text of ``path`` in chunks (str).

    Fills ``stats`` with ``newline_replacements`` and ``bom_removed``.

    Raises:
        CorpusSettingError: on an undecodable byte, giving its byte offset (setting ``encoding``).
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    stats["newline_replacements"] = 0
    stats["bom_removed"] = False
    offset = 0  # bytes fed to the decoder so far
    first = True
    carry = ""  # a trailing "\r" held back in case the next chunk starts with "\n"
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            final = not raw
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                pos = offset - pending + e.start
                raise CorpusSettingError(
                    "encoding",
                    f"{path} is not valid {encoding}: byte 0x{e.object[e.start]:02x} at byte offset "
                    f"{pos} cannot be decoded ({e.reason}). Set ", "=<the file's encoding> (for example ",
                    "=latin-1 or ", "=gbk), or fix the file.",
                ) from None
            offset += len(raw)
            if first and text:
                first = False
                if text[0] == "\ufeff":
                    text = text[1:]
                    stats["bom_removed"] = True
            if newline == "normalize":
                text = carry + text
                carry = ""
                if text.endswith("\r") and not final:
                    text, carry = text[:-1], "\r"
                if "\r" in text:
                    crlf = text.count("\r\n")
                    text = text.replace("\r\n", "\n")
                    cr = text.count("\r")
                    text = text.replace("\r", "\n")
                    stats["newline_replacements"] += crlf + cr
            if text:
                yield text
            if final:
                return
