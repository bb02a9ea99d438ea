"""``data=pycode``: a code corpus built offline from the running Python's standard library.

The blog's Linux-source experiment in small (Karpathy 2015, "The Unreasonable Effectiveness of
Recurrent Neural Networks"): every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``,
sorted by relative path, each preceded by one separator line ``# ===== <relative path> =====``,
about 10 MB (610 files, ~215 distinct characters with CPython 3.11). Left out: installed
packages (``site-packages``, ``dist-packages``), test suites (folders ``test``, ``tests``,
``idle_test``), and generated data rather than code (``encodings``' codec tables,
``pydoc_data``'s help text).

Deterministic for a given Python installation: the same files give the same bytes and sha256
(recorded with the Python version and the file count in ``meta.json`` beside the built file and
in the log). The text is the Python Software Foundation's, under the PSF License Agreement
(``LICENSE.txt`` in the standard library folder); charlm builds it on the user's machine and never
redistributes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sysconfig
import tempfile
from pathlib import Path

from charlm.errors import CharLMError

log = logging.getLogger(__name__)

#: Folders whose ``*.py`` files are not taken (installed packages, test suites, generated data).
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings", "pydoc_data"}
)
#: Bump when the selection or the layout of the built text changes (a new build is made).
BUILD_VERSION = 1
LICENCE = "PSF License Agreement (Python Software Foundation); see LICENSE.txt in the standard library folder"


def separator(relpath: str) -> str:
    """The line put before each file: ``# ===== <relative path> =====`` and a newline."""
    return f"# ===== {relpath} =====\n"


def stdlib_files(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of the selected ``*.py`` files under ``root`` (default
    the running Python's standard library), sorted by relative path."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if EXCLUDED_DIRS & set(rel.parts[:-1]) or not p.is_file():
            continue
        out.append((rel.as_posix(), p))
    out.sort(key=lambda t: t[0])
    return out


def build_text(root: str | os.PathLike | None = None) -> tuple[bytes, dict]:
    """The corpus as UTF-8 bytes and its description.

    Each file's text follows its :func:`separator` line and ends with a newline (one is added
    if missing). Files that are not valid UTF-8 are skipped and counted.

    Returns:
        ``(data, meta)``; ``meta`` has ``python`` (version), ``implementation``, ``stdlib``
        (folder), ``files``, ``skipped_files``, ``bytes``, ``sha256``, ``licence``, ``build_version``.

    Raises:
        CharLMError: if no file is found (an installation without its standard library sources).
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    parts: list[bytes] = []
    files = skipped = 0
    for rel, path in stdlib_files(root):
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw and not raw.endswith(b"\n"):
            raw += b"\n"
        parts.append(separator(rel).encode("utf-8"))
        parts.append(raw)
        files += 1
    if not files:
        raise CharLMError(
            f"data=pycode: no Python source files under {root} (this Python ships without its standard "
            "library's .py files); use another corpus, or data=file data.path=<a text file>."
        )
    data = b"".join(parts)
    meta = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "stdlib": str(root),
        "files": files,
        "skipped_files": skipped,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "licence": LICENCE,
        "build_version": BUILD_VERSION,
    }
    return data, meta


def build(cache_dir: str | os.PathLike, filename: str = "input.txt", root: str | os.PathLike | None = None) -> Path:
    """Build the corpus file once per Python installation under
    ``<cache_dir>/generated/pycode/<implementation>-<version>-<key>/`` (``filename`` and
    ``meta.json``), or reuse it; written atomically (temporary folder, then rename).

    The key hashes the standard library folder and :data:`BUILD_VERSION`; a reused build is
    checked against its ``meta.json`` (size and sha256), so an edited file is rebuilt.

    Returns:
        the path of the corpus file.
    """
    root = Path(root or sysconfig.get_paths()["stdlib"]).resolve()
    key = hashlib.sha256(f"{root}|{BUILD_VERSION}".encode()).hexdigest()[:12]
    impl = platform.python_implementation().lower()
    folder = Path(cache_dir).expanduser() / "generated" / "pycode" / f"{impl}-{platform.python_version()}-{key}"
    target = folder / filename
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if target.stat().st_size == meta["bytes"]:
            log.info(
                "corpus pycode: Python %s standard library, %d files, %s bytes, sha256 %s (built earlier in %s)",
                meta["python"], meta["files"], f"{meta['bytes']:,}", meta["sha256"], folder,
            )
            return target
    except (OSError, ValueError, KeyError):
        pass
    data, meta = build_text(root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        (tmp / filename).write_bytes(data)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if folder.exists():  # a stale or damaged build
            stale = folder.with_name(f".{folder.name}.stale.{os.getpid()}")
            os.replace(folder, stale)
            _rmtree(stale)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same build first: keep theirs
            if not meta_path.exists():
                raise
    finally:
        if tmp.exists():
            _rmtree(tmp)
    log.info(
        "corpus pycode: built from the Python %s standard library (%s): %d files, %s bytes, sha256 %s -> %s",
        meta["python"], meta["stdlib"], meta["files"], f"{meta['bytes']:,}", meta["sha256"], target,
    )
    return target


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
