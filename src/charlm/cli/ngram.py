"""``charlm-ngram``: the character n-gram baseline (interpolated Kneser-Ney) on a corpus's splits.

    charlm-ngram data=warpeace order=20 crlf=true     # the paper's 20-gram baseline
    charlm-ngram data=file data.path=my.txt order=8

The model (:class:`charlm.model.ngram.KneserNeyLM`) is fitted on the train split and scores each
split in ``split`` as ``charlm-eval`` scores a checkpoint: every character after the split's first
one, in nats/char and bits/char over the corpus's whole vocabulary. Printed, and written to
``metrics.json`` in the run dir.
"""

from __future__ import annotations

import json
import logging
import time

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from charlm.cli.common import hydra_app, write_output
from charlm.data.streams import SPLITS
from charlm.errors import CharLMError
from charlm.evaluation.crlf import count_newlines, crlf_loss
from charlm.options import Opt, check_options

log = logging.getLogger("charlm.ngram")

#: charlm-ngram's options with a type or range (``data.*`` as in charlm-train).
OPTIONS = {
    "order": Opt(int, min=1),
    "smoothing": Opt(str, choices=("mkn", "kn")),
    "discount": Opt(float, gt=0, max=1, null="estimated per order"),
    "crlf": Opt(bool),
}


def run(cfg: DictConfig) -> dict:
    """Fit on the train split of ``cfg.data`` and score ``cfg.split``; returns the metrics.

    Raises:
        CharLMError: on a bad option (:data:`OPTIONS`, ``split``) or an empty train split.
    """
    from charlm.model.ngram import KneserNeyLM

    check_options(cfg, OPTIONS)

    wanted = [str(s) for s in (cfg.split if isinstance(cfg.split, (list, ListConfig)) else [cfg.split])]
    bad = [s for s in wanted if s not in SPLITS]
    if bad or not wanted:
        raise CharLMError(f"split={wanted} must name splits among {list(SPLITS)}, e.g. split=[val,test]")
    dm = instantiate(cfg.data)
    corpus = dm.prepare()
    train = dm.split_ids("train")
    if train.shape[0] < 2:
        raise CharLMError(f"the train split of {corpus.source} is empty (data.splits={list(dm.splits)})")
    model = KneserNeyLM(int(cfg.order), len(dm.vocab), smoothing=str(cfg.smoothing), discount=cfg.get("discount"))
    t = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t
    print(
        f"{cfg.order}-gram ({cfg.smoothing}) fitted on {corpus.source} [train]: {train.shape[0]:,} characters, "
        f"{sum(model.num_ngrams):,} n-grams, {model.nbytes() / 1e6:,.0f} MB, {fit_s:.1f} s"
    )
    result: dict = {
        "order": model.order, "smoothing": model.smoothing, "discounts": model.discounts, "source": str(corpus.source),
        "splits": list(dm.splits), "vocab_size": len(dm.vocab), "train_chars": int(train.shape[0]),
        "num_ngrams": sum(model.num_ngrams), "fit_seconds": fit_s,
    }
    for split in wanted:
        ids = dm.split_ids(split)
        if ids.shape[0] < 2:
            log.info("the %s split is empty (data.splits=%s): not scored", split, list(dm.splits))
            continue
        t = time.perf_counter()
        r = model.loss(ids)
        r["seconds"] = time.perf_counter() - t
        line = (f"{corpus.source} [{split}]: loss {r['loss']:.4f} nats/char | bpc {r['bpc']:.4f} | "
                f"perplexity {r['ppl']:.4f} | {r['chars']:,} characters")
        if cfg.get("crlf"):
            r["crlf"] = crlf_loss(r["loss"], r["chars"], count_newlines(ids[1:], dm.vocab))
            line += (f"\n{corpus.source} [{split}], each newline counted as \\r\\n: loss {r['crlf']['loss']:.4f} "
                     f"nats/char | bpc {r['crlf']['bpc']:.4f} | {r['crlf']['chars']:,} characters")
        print(line)
        result[split] = r
    write_output(cfg, "metrics.json", json.dumps(result, indent=2))
    return result


hydra_main, main = hydra_app("ngram", run)


if __name__ == "__main__":
    main()
