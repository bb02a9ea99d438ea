"""``charlm-eval``: loss (nats/char), bits per character and perplexity of a checkpoint.

    charlm-eval ckpt=<run dir>/checkpoints/last.ckpt split=val     # the training corpus's split
    charlm-eval ckpt=<...>.ckpt file=some.txt                       # any text file

The text is read with the checkpoint's encoding and newline handling, and scored with the
checkpoint's vocabulary (unknown characters are an error that lists them), with state carried
across the whole text: ``batch_size`` streams, each reading the ``burn_in`` characters before
its segment unscored (for a split, the first stream reads the text before the split), so the
result does not depend on ``batch_size`` (:func:`charlm.evaluation.evaluate.evaluate`).
Results, with the number of streams and the burn-in, are printed and written to
``metrics.json`` in the output dir.
``crlf=true`` also gives the loss with every newline counted as two characters (``\r\n``), the
count of Karpathy et al.'s War and Peace (:mod:`charlm.evaluation.crlf`).
"""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.common import hydra_app, pick_device, write_output
from charlm.data.cache import prepare_corpus, training_corpus
from charlm.data.corpus import naming_options
from charlm.data.streams import DEFAULT_SPLITS, EVAL_BURN_IN, SPLITS, split_of
from charlm.errors import CharLMError
from charlm.evaluation.crlf import count_newlines, crlf_loss
from charlm.options import Opt, check_options
from charlm.evaluation.evaluate import evaluate, remap_ids

log = logging.getLogger("charlm.eval")

#: This app's names for the corpus settings that errors concern (training's are ``data.*``).
CORPUS_OPTIONS = {"path": "file", "encoding": "encoding"}
#: charlm-eval's options with a type or range (``device``: :func:`~charlm.cli.common.pick_device`).
OPTIONS = {
    "split": Opt(str, choices=SPLITS),
    "batch_size": Opt(int, min=1),
    "seq_len": Opt(int, min=1),
    "burn_in": Opt(int, min=0),
}


def run(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` on ``cfg.file`` or on split ``cfg.split`` of its training corpus.

    Raises:
        CharLMError: on a bad option (:data:`OPTIONS`, ``device``), checkpoint or text.
    """
    check_options(cfg, OPTIONS)
    device = pick_device(cfg.device)
    if not cfg.get("ckpt"):
        raise CharLMError("no checkpoint given: charlm-eval ckpt=<run dir>/checkpoints/last.ckpt split=val")
    ckpt = load_checkpoint(cfg.ckpt, map_location="cpu")
    net, vocab = model_from_checkpoint(ckpt)
    net.to(device)
    data = ckpt["charlm"].get("data") or {}
    encoding = cfg.get("encoding") or data.get("encoding", "utf-8")
    newline = data.get("newline", "normalize")
    cache_dir = cfg.paths.get("cache_dir")
    if cfg.get("file"):
        with naming_options(CORPUS_OPTIONS):
            corpus = prepare_corpus(cfg.file, encoding, newline, cache_dir)
        ids, context, what = corpus.ids, None, str(corpus.source)
    else:
        split = str(cfg.split)
        corpus = training_corpus(
            data, encoding, newline, cache_dir, CORPUS_OPTIONS, "evaluate a file instead: charlm-eval ckpt=... file=<text file>"
        )
        source = data["source"]
        if data.get("sha256") and corpus.sha256 != data["sha256"]:
            log.warning("%s changed since training (sha256 differs): its splits may not be the ones trained on", source)
        ids, context = split_of(corpus.ids, data.get("splits", DEFAULT_SPLITS), split)
        if len(ids) < 2:
            raise CharLMError(f"the {split} split of {source} is empty (data.splits={data.get('splits')}); choose another split")
        what = f"{source} [{split}]"
    burn_in = int(cfg.get("burn_in", EVAL_BURN_IN))
    result = evaluate(
        net, ids, batch_size=int(cfg.batch_size), seq_len=int(cfg.seq_len), remap=remap_ids(corpus, vocab),
        burn_in=burn_in, context=context,
    )
    result["text"] = what
    print(
        f"{what}: loss {result['loss']:.4f} nats/char | bpc {result['bpc']:.4f} | "
        f"perplexity {result['ppl']:.4f} | {result['chars']:,} characters | "
        f"{result['streams']} stream{'s' if result['streams'] != 1 else ''}, burn-in {result['burn_in']} characters"
    )
    if cfg.get("crlf"):  # the scored characters are the last result["chars"] of ids
        scored = ids[len(ids) - result["chars"]:]
        result["crlf"] = crlf_loss(result["loss"], result["chars"], count_newlines(scored, corpus.vocab))
        print(
            f"{what}, each newline counted as \\r\\n: loss {result['crlf']['loss']:.4f} nats/char | "
            f"bpc {result['crlf']['bpc']:.4f} | {result['crlf']['chars']:,} characters"
        )
    write_output(cfg, "metrics.json", json.dumps(result, indent=2))
    return result


hydra_main, main = hydra_app("eval", run)


if __name__ == "__main__":
    main()
