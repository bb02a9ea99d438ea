"""The LightningDataModule: a corpus file -> train/val/test BPTT loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L

from charlm.data.cache import PreparedCorpus, prepare_corpus
from charlm.data.corpus import naming_options, resolve_corpus_path
from charlm.data.streams import DEFAULT_SPLITS, EVAL_BURN_IN, SPLITS, BPTTLoader, split_bounds, split_of
from charlm.data.vocab import Vocab
from charlm.errors import CharLMError
from charlm.options import Opt, check_value

log = logging.getLogger(__name__)

#: What ``data.shuffle_lines`` takes (checked here, and up front by ``charlm-train``).
SHUFFLE_LINES = Opt(int, min=0, null="the file's line order")


@dataclass
class CharDataConfig:
    """The settings of a :class:`CharDataModule` (its constructor arguments, checked and
    normalised: ``splits`` a tuple of floats, sizes ``int``, ``eval_batch_size`` resolved).

    Args:
        path: a text file to train on; when set it wins over ``name``.
        name: a named corpus, looked up at ``<data_dir>/<name>/<filename>`` and downloaded from
            ``url`` (checked against ``sha256``) when missing.
        filename: the named corpus's file name.
        url: public address of the named corpus.
        sha256: checksum of the named corpus's file.
        data_dir: the data root (``paths.data_dir``, ``$CHARLM_DATA_DIR`` when set).
        cache_dir: where prepared ids are cached (``paths.cache_dir``).
        encoding: codec used to decode the file (strict); stored with the model.
        newline: ``"normalize"`` (``\\r\\n``/``\\r`` -> ``\\n``) or ``"keep"``.
        splits: contiguous ``(train, val, test)`` fractions summing to 1.
        shuffle_lines: ``None`` (the file's order) or an integer seed: the corpus's lines are put
            in that seeded random order before the split
            (:func:`~charlm.data.cache.shuffle_lines`), for a corpus of one record per line
            whose file order means something (``data=names``).
        batch_size: streams per device ``B``; the global batch is ``devices * B`` streams.
        seq_len: BPTT window length ``T``.
        eval_batch_size: streams per device for validation and test (default ``batch_size``).
        eval_burn_in: characters each validation/test stream reads, unscored, before its
            segment (the first stream reads the text before the split), so the loss does not
            depend on the number of streams (default :data:`~charlm.data.streams.EVAL_BURN_IN`,
            measured in BENCHMARKS.md; 0: every stream from a zero state).

    Raises:
        CharLMError: if neither ``path`` nor ``name`` is given, ``eval_burn_in`` is negative, or
            ``shuffle_lines`` is not null or an integer >= 0.
    """

    path: str | None = None
    name: str | None = None
    filename: str = "input.txt"
    url: str | None = None
    sha256: str | None = None
    data_dir: str = "data"
    cache_dir: str | None = None
    encoding: str = "utf-8"
    newline: str = "normalize"
    splits: Sequence[float] = DEFAULT_SPLITS
    shuffle_lines: int | None = None
    batch_size: int = 64
    seq_len: int = 128
    eval_batch_size: int | None = None
    eval_burn_in: int = EVAL_BURN_IN

    def __post_init__(self) -> None:
        if not self.path and not self.name:
            raise CharLMError("no corpus given: set data.path=<text file> or choose a named corpus (data=tinyshakespeare)")
        self.splits = tuple(float(f) for f in self.splits)
        check_value("data.shuffle_lines", self.shuffle_lines, SHUFFLE_LINES)
        self.eval_batch_size = int(self.eval_batch_size or self.batch_size)
        self.batch_size = int(self.batch_size)
        self.seq_len = int(self.seq_len)
        if int(self.eval_burn_in) < 0:
            raise CharLMError(
                f"data.eval_burn_in={self.eval_burn_in} must be >= 0 (characters read before each evaluation stream)"
            )
        self.eval_burn_in = int(self.eval_burn_in)


class CharDataModule(L.LightningDataModule):
    """Character corpus as contiguous BPTT windows (see :mod:`charlm.data.streams`).

    Takes the arguments of :class:`CharDataConfig` (the ``data`` config group, conf/_data.yaml),
    which documents them; each setting is also an attribute (``dm.batch_size``, ``dm.splits``).

    Batches are ``(x, y)``, both int64 ``[B, T]``; ``y`` is ``x`` shifted by one character.

    Raises:
        CharLMError: missing or undecodable corpus, bad split fractions, or a split too small
            for one batch (the message gives the numbers and the options to change).
    """

    #: The options that set the corpus, named in its errors (:func:`~charlm.data.corpus.naming_options`).
    OPTIONS = {"path": "data.path", "encoding": "data.encoding", "newline": "data.newline", "data_dir": "paths.data_dir"}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.settings = CharDataConfig(*args, **kwargs)
        for f in fields(self.settings):  # dm.batch_size, dm.splits, ...
            setattr(self, f.name, getattr(self.settings, f.name))
        self.corpus: PreparedCorpus | None = None
        self.bounds: list[tuple[int, int]] | None = None
        self._loaders: dict[str, BPTTLoader] = {}

    # ---------------------------------------------------------------- corpus
    def corpus_path(self, download: bool = True) -> Path:
        """The corpus file, downloading a named corpus if it is missing and ``download``."""
        if self.path:
            p = Path(os.path.expanduser(str(self.path)))
            if not p.is_file():
                raise CharLMError(f"data.path={self.path} is not a file; give the path of a text file.")
            return p
        if not download:
            return Path(self.data_dir).expanduser() / str(self.name) / self.filename
        with naming_options(self.OPTIONS):
            return resolve_corpus_path(str(self.name), self.filename, self.data_dir, self.url, self.sha256, self.cache_dir)

    def prepare(self) -> PreparedCorpus:
        """Locate, decode and cache the corpus (idempotent; a cache hit after the first call)."""
        if self.corpus is None:
            path = self.corpus_path()
            with naming_options(self.OPTIONS):
                self.corpus = prepare_corpus(path, self.encoding, self.newline, self.cache_dir,
                                             shuffle_lines=self.shuffle_lines)
            c = self.corpus
            self.bounds = split_bounds(c.num_chars, self.splits)
            sizes = ", ".join(f"{s} {e - b:,}" for s, (b, e) in zip(SPLITS, self.bounds))
            extra = []
            if c.bom_removed:
                extra.append("byte-order mark dropped")
            if c.newline_replacements:
                extra.append(f"{c.newline_replacements:,} line endings normalised to \\n")
            if c.shuffle_lines is not None:
                extra.append(f"lines shuffled before the split (data.shuffle_lines={c.shuffle_lines})")
            log.info(
                "corpus %s: %s characters, vocab %d (%s); splits: %s%s",
                c.source, f"{c.num_chars:,}", len(c.vocab), c.ids.dtype, sizes,
                f"; {'; '.join(extra)}" if extra else "",
            )
        return self.corpus

    @property
    def vocab(self) -> Vocab:
        """The corpus vocabulary (prepares the corpus on first use)."""
        return self.prepare().vocab

    def split_ids(self, split: str):
        """``[N_split]`` ids of one split (a memory-map slice)."""
        return split_of(self.prepare().ids, self.splits, split)[0]

    def preceding_ids(self, split: str):
        """``[M]`` ids of the text before one split (a memory-map slice; empty for train): what
        its first evaluation stream reads as burn-in."""
        return split_of(self.prepare().ids, self.splits, split)[1]

    def config(self) -> dict[str, Any]:
        """Plain-typed description of the data, stored in checkpoints (for eval and resume)."""
        corpus = self.prepare()
        return {
            "path": str(self.path) if self.path else None,
            "name": self.name,
            "filename": self.filename,
            "source": str(corpus.source),
            "sha256": corpus.sha256,
            "encoding": corpus.encoding,
            "newline": self.newline,
            "splits": list(self.splits),
            "shuffle_lines": self.shuffle_lines,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_chars": corpus.num_chars,
        }

    # ---------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        # Runs on one process per node before setup(): downloads and builds the cache once.
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        # Build the loaders this stage will use now, so a split too small for one batch is an
        # error before the first step (not after training up to the first validation).
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(str(stage), ())
        for split in wanted:
            if self.has_split(split):
                self.loader(split)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def loader(self, split: str) -> BPTTLoader:
        """The (cached) loader of one split for this process's rank."""
        if split not in self._loaders:
            rank, world = self._rank()
            train = split == "train"
            try:
                self._loaders[split] = BPTTLoader(
                    self.split_ids(split),
                    self.batch_size if train else self.eval_batch_size,
                    self.seq_len,
                    rank=rank,
                    world_size=world,
                    cover_all=not train,
                    burn_in=0 if train else self.eval_burn_in,
                    context=None if train else self.preceding_ids(split),
                    name=split,
                )
            except CharLMError as e:
                if train:
                    raise
                raise CharLMError(
                    f"{e} (the {split} split is read as data.eval_batch_size={self.eval_batch_size} streams; "
                    f"lower data.eval_batch_size, or set its fraction in data.splits to 0 to disable it)"
                ) from None
            if not train and rank == 0:
                ld = self._loaders[split]
                log.info(
                    "%s: %s characters scored as %d stream(s) (%d device(s) x data.eval_batch_size=%d), "
                    "each after a burn-in of %d characters (data.eval_burn_in)",
                    split, f"{ld.num_targets:,}", ld.num_streams, world, self.eval_batch_size, self.eval_burn_in,
                )
        return self._loaders[split]

    def has_split(self, split: str) -> bool:
        """Whether ``split`` is enabled (its fraction in ``data.splits`` is not 0)."""
        return self.splits[SPLITS.index(split)] > 0

    def train_dataloader(self) -> BPTTLoader:
        return self.loader("train")

    def val_dataloader(self):
        return self.loader("val") if self.has_split("val") else []

    def test_dataloader(self):
        if not self.has_split("test"):
            raise CharLMError("the test split is disabled (data.splits has test fraction 0); evaluate split=val instead")
        return self.loader("test")
