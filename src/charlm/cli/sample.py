"""``charlm-sample``: generate text from a checkpoint.

    charlm-sample ckpt=outputs/train/runs/<run>/checkpoints/last.ckpt prime="ROMEO:" length=500 \
        temperature=0.8 top_k=null num_samples=3 seed=1

The prime is taken as typed, quoted for the shell only (``prime="KING: O (my lord), it's late"``,
``prime=Привет``; see :func:`charlm.cli.overrides.quote_overrides`); ``prime_file=<UTF-8 file>``
reads it from a file. ``length`` counts new characters; ``temperature=0`` is greedy (and loops:
"the the the ..."). Every option is checked (:data:`OPTIONS`). Output is UTF-8 on stdout (with
``num_samples > 1`` each sample follows a ``--- sample i/n ---`` line) and is also saved to
``samples.txt`` in the app's output dir.

``novelty=true`` (the blog's names experiment) reports, instead of printing the samples, how many
of the ``num_samples`` sampled lines are not lines of the checkpoint's training split
(:mod:`charlm.sampling.novelty`; also written to ``novelty.json``):

    charlm-sample ckpt=<names run>/checkpoints/last.ckpt novelty=true num_samples=1000 length=40
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.common import decode_escapes, hydra_app, pick_device, write_output
from charlm.data.vocab import describe_chars
from charlm.errors import CharLMError
from charlm.options import Opt, check_options
from charlm.sampling.sampler import check_temperature, sample

log = logging.getLogger("charlm.sample")

#: charlm-sample's options with a type or range (``temperature`` is checked by the sampler,
#: ``device`` by :func:`~charlm.cli.common.pick_device`).
OPTIONS = {
    "length": Opt(int, min=0),
    "top_k": Opt(int, min=1, null="all characters"),
    "num_samples": Opt(int, min=1),
    "seed": Opt(int, null="a random seed"),
    "escapes": Opt(bool),
    "drop_unknown": Opt(bool),
}


def read_prime(cfg: DictConfig) -> str | None:
    """The prime: ``prime=`` (backslash escapes applied with ``escapes=true``) or the UTF-8 text
    of ``prime_file=`` (any characters, no shell or Hydra quoting; used exactly, final newline
    included).

    Raises:
        CharLMError: if both are given, the file is missing or not UTF-8 (with the byte offset), or
            the prime has an invalid backslash escape (:func:`~charlm.cli.common.decode_escapes`).
    """
    prime = cfg.get("prime")
    path = cfg.get("prime_file")
    if path:
        if prime is not None:
            raise CharLMError("give either prime= or prime_file=, not both")
        p = Path(str(path)).expanduser()
        try:
            return p.read_bytes().decode("utf-8")
        except OSError as e:
            raise CharLMError(f"prime_file={path} cannot be read: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise CharLMError(
                f"prime_file={path} is not UTF-8: byte 0x{e.object[e.start]:02x} at byte offset {e.start}; save it as UTF-8"
            ) from None
    if prime is None:
        return None
    if not cfg.get("escapes"):
        return str(prime)
    return decode_escapes(str(prime), "prime")


def join_samples(texts: list[str]) -> str:
    """The samples as printed: one sample alone as is; several each under a ``--- sample i/n ---``
    line (a blank line is no separator in text that has blank lines itself). Ends with a newline."""
    if len(texts) == 1:
        return texts[0] + "\n"
    return "\n".join(f"--- sample {i + 1}/{len(texts)} ---\n{t}\n" for i, t in enumerate(texts))


def run(cfg: DictConfig) -> list[str]:
    """Sample from ``cfg.ckpt`` as configured; returns the samples.

    Raises:
        CharLMError: on a bad option (:data:`OPTIONS`, ``device``, ``temperature``), checkpoint or prime.
    """
    check_options(cfg, OPTIONS)
    check_temperature(cfg.temperature)
    if not cfg.get("ckpt"):
        raise CharLMError("no checkpoint given: charlm-sample ckpt=<run dir>/checkpoints/last.ckpt")
    device = pick_device(str(cfg.device))
    ckpt = load_checkpoint(cfg.ckpt, map_location="cpu")
    net, vocab = model_from_checkpoint(ckpt)
    ckpt_data = ckpt["charlm"].get("data") or {}
    net.to(device)
    prime = read_prime(cfg)
    missing = vocab.unknown(prime) if prime else []
    if missing and cfg.drop_unknown:
        n = sum(prime.count(c) for c in missing)
        log.warning("drop_unknown=true: dropped %d prime character(s) not in the vocabulary: %s", n, describe_chars(missing))
    texts = sample(
        net,
        vocab,
        prime=prime,
        length=cfg.length,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        num_samples=cfg.num_samples,
        seed=cfg.seed,
        drop_unknown=bool(cfg.drop_unknown),
    )
    joined = join_samples(texts)
    if cfg.get("novelty"):
        used_prime = texts[0][: len(texts[0]) - int(cfg.length)]  # each sample is the prime + length characters
        report_novelty(cfg, texts, used_prime, ckpt_data)
    else:
        sys.stdout.write(joined)
        sys.stdout.flush()
    write_output(cfg, "samples.txt", joined)
    return texts


def report_novelty(cfg: DictConfig, texts: list[str], prime: str, data: dict) -> dict:
    """Print (and write ``novelty.json``) how many sampled lines are not in the training split."""
    import json

    from charlm.data.corpus import naming_options
    from charlm.data.datamodule import CharDataModule
    from charlm.sampling import novelty as nv

    with naming_options(CharDataModule.OPTIONS):  # the corpus as the checkpoint's training run set it
        train, whole, source = nv.corpus_lines(data, cfg.paths.get("cache_dir"))
    lines, unfinished = nv.first_lines(texts, prime)
    r = nv.novelty(lines, train, whole, unfinished)
    r.update({"source": source, "prime": prime, "temperature": float(cfg.temperature), "seed": cfg.seed})
    print(nv.describe(r, source), flush=True)
    write_output(cfg, "novelty.json", json.dumps(r, indent=2))
    return r


hydra_main, main = hydra_app("sample", run)


if __name__ == "__main__":
    main()
