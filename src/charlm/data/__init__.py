"""Data path: corpus file -> decoded text -> vocabulary -> ids (cached .npy) -> BPTT windows.

- :mod:`charlm.data.corpus`     locate/download a corpus, decode it, build vocab and ids (cached)
- :mod:`charlm.data.vocab`      the sorted character vocabulary
- :mod:`charlm.data.streams`    contiguous BPTT streams and their resumable loader
- :mod:`charlm.data.datamodule` the LightningDataModule tying these together
"""

from charlm.data.corpus import PreparedCorpus, prepare_corpus, resolve_corpus_path
from charlm.data.datamodule import CharDataModule
from charlm.data.streams import BPTTLoader, split_bounds
from charlm.data.vocab import Vocab

__all__ = [
    "BPTTLoader",
    "CharDataModule",
    "PreparedCorpus",
    "Vocab",
    "prepare_corpus",
    "resolve_corpus_path",
    "split_bounds",
]
