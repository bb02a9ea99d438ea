"""How many sampled lines are new: the blog's baby-names experiment (Karpathy 2015, "The
Unreasonable Effectiveness of Recurrent Neural Networks": most sampled names were not in the
training list).

Each sample is read up to its first newline after the prime; that line (with the prime's own
last line in front) is one sampled name. It is *novel* when it is not a line of the checkpoint's
training split; the report also gives the lines not found anywhere in the corpus (all splits).
"""

from __future__ import annotations

from pathlib import Path

from charlm.data.cache import prepare_corpus
from charlm.data.streams import DEFAULT_SPLITS, split_of
from charlm.errors import CharLMError


def first_lines(texts: list[str], prime: str) -> tuple[list[str], int]:
    """The first complete line of each sample (``prime`` + continuation) and the number of samples
    with no newline after the prime (unfinished, not counted as lines)."""
    head = prime.rsplit("\n", 1)[-1]
    lines, unfinished = [], 0
    for t in texts:
        rest = t[len(prime):]
        if "\n" not in rest:
            unfinished += 1
            continue
        lines.append(head + rest.split("\n", 1)[0])
    return lines, unfinished


def corpus_lines(data: dict, cache_dir: str | None = None) -> tuple[set[str], set[str], str]:
    """``(lines of the train split, lines of the whole corpus, source)`` of a checkpoint's corpus
    (``ckpt["charlm"]["data"]``: its source file, encoding, newline handling and splits).

    Raises:
        CharLMError: if the checkpoint's corpus is not available on this machine.
    """
    source = data.get("source")
    if not source or not Path(source).is_file():
        raise CharLMError(
            f"novelty=true compares samples with the checkpoint's training corpus {source!r}, which is not "
            "available here; run it where the corpus is"
        )
    corpus = prepare_corpus(source, data.get("encoding", "utf-8"), data.get("newline", "normalize"), cache_dir,
                            shuffle_lines=data.get("shuffle_lines"))
    train = corpus.vocab.decode(split_of(corpus.ids, data.get("splits", DEFAULT_SPLITS), "train")[0])
    whole = corpus.vocab.decode(corpus.ids)
    return set(train.split("\n")), set(whole.split("\n")), str(source)


def novelty(lines: list[str], train: set[str], corpus: set[str] | None = None, unfinished: int = 0) -> dict:
    """Counts and fractions of sampled ``lines`` not in ``train`` (and not in ``corpus``).

    Returns:
        ``{"samples", "lines", "unfinished", "distinct", "novel", "novel_fraction",
        "not_in_corpus", "not_in_corpus_fraction", "train_lines"}``; fractions are of ``lines``
        (empty lines count as lines: a model that ends a name at once made an empty name).

    Raises:
        CharLMError: if there is no complete line (every sample unfinished: raise ``length``).
    """
    if not lines:
        raise CharLMError(
            f"none of the {unfinished} samples ended its line: raise length (new characters per sample)"
        )
    novel = sum(1 for s in lines if s not in train)
    out = {
        "samples": len(lines) + unfinished,
        "lines": len(lines),
        "unfinished": unfinished,
        "distinct": len(set(lines)),
        "novel": novel,
        "novel_fraction": novel / len(lines),
        "train_lines": len(train),
    }
    if corpus is not None:
        n = sum(1 for s in lines if s not in corpus)
        out["not_in_corpus"] = n
        out["not_in_corpus_fraction"] = n / len(lines)
    return out


def describe(r: dict, what: str) -> str:
    """One line for the console."""
    line = (
        f"{r['samples']:,} samples: {r['lines']:,} complete lines ({r['distinct']:,} distinct), "
        f"{r['novel']:,} ({100 * r['novel_fraction']:.1f}%) not lines of the train split of {what}"
    )
    if "not_in_corpus" in r:
        line += f", {r['not_in_corpus']:,} ({100 * r['not_in_corpus_fraction']:.1f}%) not in any split"
    return line
