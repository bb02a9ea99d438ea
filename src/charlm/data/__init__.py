"""Data path: corpus file -> decoded text -> vocabulary -> ids (cached .npy) -> BPTT windows.

- :mod:`charlm.data.corpus`     locate/download a corpus file and decode its text
- :mod:`charlm.data.cache`      the prepared corpus: vocabulary and ids, cached on disk
- :mod:`charlm.data.utf8fast`   the byte-level UTF-8 fast path of corpus preparation
- :mod:`charlm.data.vocab`      the sorted character vocabulary
- :mod:`charlm.data.streams`    contiguous BPTT streams and their resumable loader
- :mod:`charlm.data.datamodule` the LightningDataModule tying these together

The names below are imported lazily (PEP 562 module ``__getattr__``): ``charlm.data.cache``
alone needs only numpy, while the DataModule pulls in lightning and torch (~420 MB of RSS), so
corpus preparation does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "BPTTLoader": "charlm.data.streams",
    "CharDataModule": "charlm.data.datamodule",
    "PreparedCorpus": "charlm.data.cache",
    "Vocab": "charlm.data.vocab",
    "prepare_corpus": "charlm.data.cache",
    "resolve_corpus_path": "charlm.data.corpus",
    "split_bounds": "charlm.data.streams",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from charlm.data.cache import PreparedCorpus, prepare_corpus
    from charlm.data.corpus import resolve_corpus_path
    from charlm.data.datamodule import CharDataModule
    from charlm.data.streams import BPTTLoader, split_bounds
    from charlm.data.vocab import Vocab


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
