"""How long must an evaluation stream's burn-in be? (the default of ``data.eval_burn_in``).

    python -m benchmarks.burn_in --ckpt <run dir>/checkpoints/last.ckpt [--split val]
        [--streams 1,8,64,512] [--burn-in 0,16,32,64,128,256,512] [--json FILE]

Scores the checkpoint on the whole split of its training corpus with ``charlm.evaluation.evaluate``
(what validation and ``charlm-eval`` run) for every number of streams and burn-in length, and
prints each loss and its distance from one stream over the whole split (the single pass, which
needs no burn-in) that has read the text before the split (the longest burn-in listed), so that
the distance measures the stream starts alone. The single pass from a zero state at the split's
start is printed too. The default burn-in is the shortest length whose distance stays well under
1e-3 nats for every number of streams (BENCHMARKS.md, "Evaluation streams and burn-in").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def measure(ckpt: str, split: str, streams: list[int], burn_ins: list[int], seq_len: int = 256) -> dict:
    from charlm.checkpoint import load_checkpoint, model_from_checkpoint
    from charlm.data.cache import prepare_corpus
    from charlm.data.streams import split_of
    from charlm.evaluation.evaluate import evaluate, remap_ids

    ck = load_checkpoint(ckpt, map_location="cpu")
    net, vocab = model_from_checkpoint(ck)
    net.eval()
    data = ck["charlm"]["data"]
    corpus = prepare_corpus(data["source"], data.get("encoding", "utf-8"), data.get("newline", "normalize"))
    (ids, context), lut = split_of(corpus.ids, data["splits"], split), remap_ids(corpus, vocab)
    t = time.perf_counter()
    longest = max(burn_ins)
    single = evaluate(net, ids, batch_size=1, seq_len=seq_len, remap=lut, burn_in=longest, context=context)["loss"]
    rows = [{"streams": 1, "burn_in": longest, "loss": single, "diff": 0.0, "seconds": time.perf_counter() - t}]
    print(f"1 stream (one pass, after the {longest} characters before the split): {single:.5f} nats/char", flush=True)
    t = time.perf_counter()
    cold = evaluate(net, ids, batch_size=1, seq_len=seq_len, remap=lut, burn_in=0)["loss"]
    rows.append({"streams": 1, "burn_in": 0, "loss": cold, "diff": cold - single, "seconds": time.perf_counter() - t})
    print(f"1 stream (one pass from a zero state): {cold:.5f} nats/char ({cold - single:+.5f})", flush=True)
    for k in burn_ins:
        for g in streams:
            if g == 1:
                continue
            t = time.perf_counter()
            loss = evaluate(net, ids, batch_size=g, seq_len=seq_len, remap=lut, burn_in=k, context=context)["loss"]
            rows.append({"streams": g, "burn_in": k, "loss": loss, "diff": loss - single, "seconds": time.perf_counter() - t})
            print(f"{g:4d} streams, burn-in {k:4d}: {loss:.5f} nats/char ({loss - single:+.5f})", flush=True)
    return {
        "ckpt": str(ckpt),
        "model": net.config(),
        "step": int(ck.get("global_step", 0)),
        "split": split,
        "split_chars": len(ids),
        "single_stream_loss": single,
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.burn_in", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="a trained checkpoint (e.g. the default run's last.ckpt)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--streams", default="1,8,64,512")
    ap.add_argument("--burn-in", default="0,16,32,64,128,256,512")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res = measure(
        args.ckpt, args.split, [int(s) for s in args.streams.split(",")], [int(k) for k in args.burn_in.split(",")],
        args.seq_len,
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
