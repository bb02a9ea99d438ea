"""``charlm-visualize``: see what the network learned.

    charlm-visualize ckpt=<run dir>/checkpoints/last.ckpt text=some.txt max_chars=2000
    charlm-visualize ckpt=<...>.ckpt text='"Hello (world)", he said.'   # a literal text
    charlm-visualize ckpt=<...>.ckpt                                     # a slice of the val split
    charlm-visualize samples=<run dir>                                   # evolution of samples only

Writes ``cells.html`` (the text shaded by any cell, next-character guesses, shading by loss,
interpretable cells) and ``cells_gates.png`` (gate saturation) to ``out`` (default: the app's
run dir), and ``samples.html`` when ``samples`` is given; prints each page's path on stdout.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.common import decode_escapes, hydra_app, pick_device
from charlm.data.cache import training_corpus
from charlm.data.corpus import naming_options, read_text
from charlm.data.streams import DEFAULT_SPLITS, SPLITS, split_of
from charlm.errors import CharLMError
from charlm.options import Opt, check_options
from charlm.shell import shown_path
from charlm.visualize.build import visualize_samples, visualize_text

log = logging.getLogger("charlm.visualize")

#: This app's names for the corpus settings that errors concern (training's are ``data.*``).
CORPUS_OPTIONS = {"path": "text", "encoding": "encoding"}
#: charlm-visualize's options with a type or range (``device``: :func:`~charlm.cli.common.pick_device`).
OPTIONS = {
    "split": Opt(str, choices=SPLITS),
    "offset": Opt(int, min=0),
    "max_chars": Opt(int, min=1, null="the whole split or text"),
    "top_k": Opt(int, min=1),
    "escapes": Opt(bool),
}


def resolve_text(cfg: DictConfig, ckpt: dict) -> tuple[str, str]:
    """The text to show and a description of where it came from.

    ``cfg.text`` is read as a file when such a file exists (with ``cfg.encoding`` or else the
    checkpoint's encoding, and the checkpoint's newline handling), else taken literally; when it is null, ``max_chars`` characters from
    ``offset`` into split ``cfg.split`` of the checkpoint's training corpus.

    Raises:
        CharLMError: on a bad split, a corpus that is not available here, a text file that is
            not valid in the encoding (with the byte offset), or a bad backslash escape.
    """
    data = ckpt["charlm"].get("data") or {}
    encoding = cfg.get("encoding") or data.get("encoding", "utf-8")
    newline = data.get("newline", "normalize")
    text = cfg.get("text")
    if text is not None:
        text = str(text)
        p = Path(text).expanduser()
        if len(text) < 4096 and p.is_file():
            with naming_options(CORPUS_OPTIONS):
                return read_text(p, encoding, newline), str(p)
        if cfg.get("escapes"):
            text = decode_escapes(text, "text")
        return text, "the given text"
    split = str(cfg.split)
    if split not in SPLITS:
        raise CharLMError(f"split={split!r} must be train, val or test (or give text=<file or string>)")
    corpus = training_corpus(
        data, encoding, newline, cfg.paths.get("cache_dir"), CORPUS_OPTIONS,
        "give the text: charlm-visualize ckpt=... text=<file or string>",
    )
    source = data["source"]
    ids, _ = split_of(corpus.ids, data.get("splits", DEFAULT_SPLITS), split)
    offset = int(cfg.get("offset") or 0)
    if offset < 0 or offset >= len(ids):
        raise CharLMError(f"offset={offset} is outside the {split} split ({len(ids):,} characters)")
    n = int(cfg.max_chars) if cfg.get("max_chars") is not None else len(ids) - offset
    return corpus.vocab.decode(ids[offset : offset + n]), f"{source} [{split}, from character {offset:,}]"


def run(cfg: DictConfig) -> list[Path]:
    """Write the pages ``cfg`` asks for; returns their paths (cells page first).

    Raises:
        CharLMError: on a bad option (:data:`OPTIONS`, ``device``), checkpoint or text.
    """
    check_options(cfg, OPTIONS)
    device = pick_device(cfg.device)
    if not cfg.get("ckpt") and not cfg.get("samples"):
        raise CharLMError(
            "nothing to visualize: charlm-visualize ckpt=<run dir>/checkpoints/last.ckpt [text=<file or string>] "
            "and/or samples=<run dir>"
        )
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir)
    paths: list[Path] = []
    if cfg.get("ckpt"):
        ckpt = load_checkpoint(cfg.ckpt, map_location="cpu")
        net, vocab = model_from_checkpoint(ckpt)
        net.to(device)
        text, source = resolve_text(cfg, ckpt)
        res = visualize_text(
            net, vocab, text, out, max_chars=cfg.get("max_chars"), top_k=int(cfg.top_k), subtitle=f"{cfg.ckpt} on {source}."
        )
        for e in res.cells:
            if e["cells"]:
                c = e["cells"][0]
                log.info("%s: layer %d %s[%d], r=%+.2f", e["feature"], c["layer"], c["state"], c["unit"], c["r"])
        paths.append(res.html_path)
        if res.png_path is not None:
            log.info("gate saturation: %s", res.png_path)
        else:
            log.info("no gate-saturation plot: a plain RNN has no gates")
    if cfg.get("samples"):
        path, _ = visualize_samples(cfg.samples, out)
        paths.append(path)
    for p in paths:
        print(shown_path(p))
    return paths


hydra_main, main = hydra_app("visualize", run)


if __name__ == "__main__":
    main()
