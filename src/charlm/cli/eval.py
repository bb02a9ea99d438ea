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
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.common import clean_errors, fix_argv, utf8_stdout
from charlm.cli.sample import pick_device
from charlm.config import config_dir
from charlm.data.corpus import prepare_corpus
from charlm.data.streams import EVAL_BURN_IN, split_bounds
from charlm.errors import CharLMError
from charlm.evaluation.evaluate import evaluate, remap_ids

log = logging.getLogger("charlm.eval")

#: This app's names for the corpus options that error messages mention (training's are ``data.*``).
OPTIONS = {"path": "file", "encoding": "encoding"}


def run(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` on ``cfg.file`` or on split ``cfg.split`` of its training corpus."""
    if not cfg.get("ckpt"):
        raise CharLMError("no checkpoint given: charlm-eval ckpt=<run dir>/checkpoints/last.ckpt split=val")
    ckpt = load_checkpoint(cfg.ckpt, map_location="cpu")
    net, vocab = model_from_checkpoint(ckpt)
    net.to(pick_device(str(cfg.device)))
    data = ckpt["charlm"].get("data") or {}
    encoding = cfg.get("encoding") or data.get("encoding", "utf-8")
    newline = data.get("newline", "normalize")
    cache_dir = cfg.paths.get("cache_dir")
    if cfg.get("file"):
        corpus = prepare_corpus(cfg.file, encoding, newline, cache_dir, options=OPTIONS)
        ids, context, what = corpus.ids, None, str(corpus.source)
    else:
        split = str(cfg.split)
        if split not in ("train", "val", "test"):
            raise CharLMError(f"split={split!r} must be train, val or test (or give file=<text file>)")
        source = data.get("source")
        if not source or not Path(source).is_file():
            raise CharLMError(
                f"the checkpoint's training corpus {source!r} is not available here; evaluate a file instead: "
                "charlm-eval ckpt=... file=<text file>"
            )
        corpus = prepare_corpus(source, encoding, newline, cache_dir, options=OPTIONS)
        if data.get("sha256") and corpus.sha256 != data["sha256"]:
            log.warning("%s changed since training (sha256 differs): its splits may not be the ones trained on", source)
        b, e = split_bounds(corpus.num_chars, data.get("splits", (0.9, 0.05, 0.05)))[("train", "val", "test").index(split)]
        if e - b < 2:
            raise CharLMError(f"the {split} split of {source} is empty (data.splits={data.get('splits')}); choose another split")
        ids, context, what = corpus.ids[b:e], corpus.ids[:b], f"{source} [{split}]"
    burn_in = int(cfg.get("burn_in", EVAL_BURN_IN))
    if burn_in < 0:
        raise CharLMError(f"burn_in={burn_in} must be >= 0 (characters each stream reads before its segment)")
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
    if cfg.paths.get("output_dir"):
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@clean_errors
def hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    utf8_stdout()
    fix_argv()
    hydra_main()


if __name__ == "__main__":
    main()
