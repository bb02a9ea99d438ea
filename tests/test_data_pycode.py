"""charlm.data.pycode (data=pycode): the code corpus built offline from the running Python's standard library."""

from __future__ import annotations

import json
import platform
import sysconfig

import pytest
from hydra.utils import instantiate

from charlm.data import pycode
from charlm.errors import CharLMError


def test_build_selects_sorts_and_separates(tmp_path):
    root = tmp_path / "lib"
    for rel, text in {
        "b.py": "x = 1\n",
        "a.py": "y = 2",  # no final newline: one is added
        "pkg/__init__.py": "",
        "pkg/mod.py": "def f():\n    return 'é'\n",
        "pkg/tests/test_mod.py": "assert 0\n",  # test suites are left out
        "test/test_a.py": "assert 0\n",
        "site-packages/thirdparty.py": "import this\n",  # installed packages too
        "encodings/cp0.py": "table = ''\n",  # generated data
        "notes.txt": "not python\n",
        "latin.py": "s = '\xe9'\n",  # written as latin-1 below: not UTF-8, skipped
    }.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("latin-1" if rel == "latin.py" else "utf-8"))
    data, meta = pycode.build_text(root)
    assert data.decode("utf-8") == (
        "# ===== a.py =====\ny = 2\n"
        "# ===== b.py =====\nx = 1\n"
        "# ===== pkg/__init__.py =====\n"
        "# ===== pkg/mod.py =====\ndef f():\n    return 'é'\n"
    )
    assert meta["files"] == 4 and meta["skipped_files"] == 1
    assert meta["python"] == platform.python_version() and "PSF" in meta["licence"]


def test_no_sources_is_a_clear_error(tmp_path):
    with pytest.raises(CharLMError, match="no Python source files"):
        pycode.build_text(tmp_path)


def test_stdlib_build_is_deterministic_cached_and_recorded(tmp_path):
    a = pycode.build(tmp_path / "c1")
    b = pycode.build(tmp_path / "c2")
    assert a.read_bytes() == b.read_bytes()  # same Python, same bytes
    meta = json.loads((a.parent / "meta.json").read_text())
    assert meta["python"] == platform.python_version()
    assert meta["stdlib"] == str(pycode.Path(sysconfig.get_paths()["stdlib"]).resolve())
    assert meta["files"] > 100 and 2_000_000 < meta["bytes"] < 40_000_000
    assert meta["sha256"] == pycode.hashlib.sha256(a.read_bytes()).hexdigest()
    mtime = a.stat().st_mtime_ns
    assert pycode.build(tmp_path / "c1") == a and a.stat().st_mtime_ns == mtime  # reused, not rebuilt
    a.write_bytes(b"damaged")  # a damaged build is rebuilt
    assert pycode.build(tmp_path / "c1").read_bytes() == b.read_bytes()


def test_data_pycode_prepares_like_any_corpus(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLM_DATA_DIR", str(tmp_path / "data"))  # nothing there: built offline
    cfg = compose("train", tmp_path / "run", ["data=pycode", f"paths.cache_dir={tmp_path / 'cache'}"])
    dm = instantiate(cfg.data)
    corpus = dm.prepare()
    assert corpus.source.is_relative_to(tmp_path / "cache" / "generated" / "pycode")
    text = dm.vocab.decode(corpus.ids[:200])
    first = pycode.stdlib_files()[0][0]
    assert text.startswith(pycode.separator(first))
    assert {"\n", " ", "(", ")", ":", "#", "="} <= set(dm.vocab.chars)
    assert all(e - b > 100_000 for b, e in dm.bounds)  # 90/5/5 of a few MB
    assert dm.config()["sha256"] == json.loads((corpus.source.parent / "meta.json").read_text())["sha256"]
